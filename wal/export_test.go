package wal

// SegmentFirstIndexes returns the first index of each segment, oldest
// first, so tests can tell which segments an append will rewrite or remove.
func (w *WAL) SegmentFirstIndexes() []uint64 {
	w.writeMu.Lock()
	defer w.writeMu.Unlock()
	w.mu.Lock()
	defer w.mu.Unlock()
	firsts := make([]uint64, len(w.segs))
	for n, s := range w.segs {
		firsts[n] = s.hdr.firstIndex
	}
	return firsts
}

// SetMaxBatchBytes lowers the batch payload limit Append enforces and
// returns a function restoring it.
func SetMaxBatchBytes(n int) (restore func()) {
	old := maxBatchBytes
	maxBatchBytes = n
	return func() { maxBatchBytes = old }
}
