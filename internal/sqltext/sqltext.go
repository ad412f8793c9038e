// Package sqltext classifies SQL text without parsing it with SQLite (for
// code that must not depend on cgo, such as the shell).
package sqltext

import "strings"

// LoneTxControl returns BEGIN, COMMIT, END or ROLLBACK when sql is exactly
// one such statement (BEGIN [DEFERRED|IMMEDIATE|EXCLUSIVE] [TRANSACTION],
// COMMIT|END|ROLLBACK [TRANSACTION]; not ROLLBACK TO), else "".
func LoneTxControl(sql string) string {
	t := strings.TrimSpace(sql)
	for strings.HasSuffix(t, ";") {
		t = strings.TrimSpace(strings.TrimSuffix(t, ";"))
	}
	f := strings.Fields(strings.ToUpper(t))
	if len(f) == 0 || len(f) > 3 {
		return ""
	}
	kw, rest := f[0], f[1:]
	switch kw {
	case "BEGIN":
		if len(rest) > 0 && (rest[0] == "DEFERRED" || rest[0] == "IMMEDIATE" || rest[0] == "EXCLUSIVE") {
			rest = rest[1:]
		}
	case "COMMIT", "END", "ROLLBACK":
	default:
		return ""
	}
	if len(rest) == 0 || len(rest) == 1 && rest[0] == "TRANSACTION" {
		return kw
	}
	return ""
}
