// Package sqltext classifies SQL text without parsing it with SQLite (for
// code that must not depend on cgo, such as the shell).
package sqltext

import "strings"

// LoneTxControl returns BEGIN, COMMIT, END or ROLLBACK when sql is exactly
// one such statement, comments and a final semicolon aside: BEGIN
// [DEFERRED|IMMEDIATE|EXCLUSIVE] [TRANSACTION [name]], COMMIT|END|ROLLBACK
// [TRANSACTION [name]] (not ROLLBACK TO a savepoint); else "".
func LoneTxControl(sql string) string {
	// Every write passes here: most start with another keyword, and need
	// no copy without their comments.
	if t := strings.TrimLeft(sql, " \t\r\n"); t == "" || !strings.ContainsRune("BbCcEeRr-/", rune(t[0])) {
		return ""
	}
	t := strings.TrimSpace(stripComments(sql))
	for strings.HasSuffix(t, ";") {
		t = strings.TrimSpace(strings.TrimSuffix(t, ";"))
	}
	if strings.ContainsAny(t, ";'\"`[") {
		return "" // more than one statement, or a quoted name: not a lone control
	}
	f := strings.Fields(strings.ToUpper(t))
	if len(f) == 0 {
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
	switch {
	case len(rest) == 0, len(rest) == 1 && rest[0] == "TRANSACTION":
		return kw
	case len(rest) == 2 && rest[0] == "TRANSACTION" && rest[1] != "TO":
		return kw // a transaction name, which SQLite accepts and ignores
	}
	return ""
}

// stripComments removes -- and /* */ comments outside quotes.
func stripComments(sql string) string { return scan(sql, false) }

// scan removes comments outside quotes and, with blankQuoted, quoted text
// ('...', "...", `...`, [...]) too, each replaced by a space.
func scan(sql string, blankQuoted bool) string {
	var b strings.Builder
	var quote byte
	for i := 0; i < len(sql); i++ {
		c := sql[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
			if blankQuoted {
				continue
			}
		case c == '\'' || c == '"' || c == '`' || blankQuoted && c == '[':
			quote = c
			if c == '[' {
				quote = ']'
			}
			if blankQuoted {
				b.WriteByte(' ')
				continue
			}
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-':
			for i < len(sql) && sql[i] != '\n' {
				i++
			}
			b.WriteByte(' ')
			continue
		case c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			end := strings.Index(sql[i+2:], "*/")
			if end < 0 {
				i = len(sql)
			} else {
				i += end + 3
			}
			b.WriteByte(' ')
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// ReadOnly reports whether sql is surely a read: it starts (comments aside)
// with SELECT, VALUES or EXPLAIN, or with WITH, and names none of INSERT,
// UPDATE, DELETE, REPLACE or RETURNING outside quotes. It errs towards
// false: a statement it cannot tell about may write.
func ReadOnly(sql string) bool {
	t := scan(sql, true) // words outside quotes and comments only
	f := strings.FieldsFunc(strings.ToUpper(t), func(r rune) bool {
		return !(r == '_' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r >= 0x80)
	})
	if len(f) == 0 {
		return false
	}
	switch f[0] {
	case "SELECT", "VALUES", "EXPLAIN", "WITH":
	default:
		return false
	}
	for _, w := range f {
		switch w {
		case "INSERT", "UPDATE", "DELETE", "REPLACE", "RETURNING":
			return false
		}
	}
	return true
}
