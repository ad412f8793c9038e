package sqltext

import "testing"

// TestLoneTxControl classifies the requests that open or end a transaction
// spanning requests.
func TestLoneTxControl(t *testing.T) {
	for sql, want := range map[string]string{
		"BEGIN": "BEGIN", " begin immediate transaction ; ": "BEGIN", "BEGIN EXCLUSIVE": "BEGIN",
		"COMMIT": "COMMIT", "end transaction": "END", "ROLLBACK;": "ROLLBACK",
		"ROLLBACK TO sp": "", "BEGIN; INSERT INTO t VALUES (1)": "", "BEGIN; COMMIT": "",
		"BEGINNING": "", "SELECT 1": "", "": "", "BEGIN TRANSACTION x y": "",
		"ROLLBACK TRANSACTION t1": "ROLLBACK", "COMMIT TRANSACTION t1": "COMMIT", "ROLLBACK TRANSACTION TO sp": "",
		"-- undo\nROLLBACK -- all of it": "ROLLBACK", "/* go */ BEGIN /* now */;": "BEGIN",
		"BEGIN; -- x\nCOMMIT": "", "SELECT '--'": "", "/* unterminated BEGIN": "",
	} {
		if got := LoneTxControl(sql); got != want {
			t.Errorf("%q: %q, want %q", sql, got, want)
		}
	}
}

// BenchmarkLoneTxControlInsert is the cost every write pays: no
// allocation for a statement that is not a transaction control.
func BenchmarkLoneTxControlInsert(b *testing.B) {
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if LoneTxControl("INSERT INTO t (id, name) VALUES (?, ?)") != "" {
			b.Fatal("misclassified")
		}
	}
}

func TestReadOnly(t *testing.T) {
	for sql, want := range map[string]bool{
		"SELECT 1":                                           true,
		"  select * from t where x = 'insert'":               true,
		"WITH a AS (SELECT 1) SELECT * FROM a":               true,
		"/* x */ VALUES (1)":                                 true,
		`SELECT "delete" FROM t`:                             true,
		"WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a": false,
		"INSERT INTO t VALUES (1) RETURNING id":              false,
		"SELECT * FROM t; DELETE FROM t":                     false,
		"CREATE TABLE t (x)":                                 false,
		"PRAGMA user_version = 3":                            false,
		"BEGIN":                                              false,
		"":                                                   false,
		"UPDATE t SET x = 1":                                 false,
	} {
		if got := ReadOnly(sql); got != want {
			t.Errorf("ReadOnly(%q) = %v, want %v", sql, got, want)
		}
	}
}
