package wire

// LoseReply makes the server lose the reply to the requests f picks (see
// loseReply); nil restores normal service.
func LoseReply(f func(*Request) bool) {
	if f == nil {
		loseReply.Store(nil)
		return
	}
	loseReply.Store(&f)
}
