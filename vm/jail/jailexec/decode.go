package jailexec

import (
	"errors"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// ParsePlan decodes a Plan from the JSON that encoding/json makes of it
// (vm/jail marshals it). It is hand-written because the launcher lives in
// the per-VM relay binary too, where encoding/json would be paid for in
// each VM's host memory. It is stricter than json.Unmarshal: keys are
// matched exactly, an unknown key is an error, and so is anything after
// the object.
func ParsePlan(s string) (Plan, error) {
	d := &decoder{s: s}
	var p Plan
	err := d.object(func(key string) error {
		switch key {
		case "uid":
			return d.int(&p.UID)
		case "gid":
			return d.int(&p.GID)
		case "groups":
			if d.null() {
				return nil
			}
			p.Groups = []int{}
			return d.array(func() error {
				var g int
				err := d.int(&g)
				p.Groups = append(p.Groups, g)
				return err
			})
		case "cgroup":
			return d.string(&p.Cgroup)
		case "hide":
			return d.strings(&p.Hide)
		case "binds":
			if d.null() {
				return nil
			}
			p.Binds = []Bind{}
			return d.array(func() error {
				var b Bind
				err := d.object(func(key string) error {
					switch key {
					case "path":
						return d.string(&b.Path)
					case "ro":
						return d.bool(&b.ReadOnly)
					}
					return d.errorf("unknown key %q in a bind", key)
				})
				p.Binds = append(p.Binds, b)
				return err
			})
		case "check":
			if d.null() {
				return nil
			}
			p.Check = []Access{}
			return d.array(func() error {
				var a Access
				err := d.object(func(key string) error {
					switch key {
					case "path":
						return d.string(&a.Path)
					case "mode":
						return d.string(&a.Mode)
					}
					return d.errorf("unknown key %q in a check", key)
				})
				p.Check = append(p.Check, a)
				return err
			})
		case "dir":
			return d.string(&p.Dir)
		case "argv":
			return d.strings(&p.Argv)
		case "env":
			return d.strings(&p.Env)
		}
		return d.errorf("unknown key %q", key)
	})
	if err != nil {
		return Plan{}, err
	}
	if d.ws(); d.i != len(d.s) {
		return Plan{}, d.errorf("data after the plan")
	}
	return p, nil
}

type decoder struct {
	s string
	i int
}

func (d *decoder) errorf(format string, args ...any) error {
	return errors.New("plan json at offset " + strconv.Itoa(d.i) + ": " + sprintf(format, args...))
}

// sprintf formats the few messages errorf makes (%q of a string).
func sprintf(format string, args ...any) string {
	out := make([]byte, 0, len(format)+16)
	for i := 0; i < len(format); i++ {
		if format[i] == '%' && i+1 < len(format) && format[i+1] == 'q' && len(args) > 0 {
			s, _ := args[0].(string)
			out, args, i = strconv.AppendQuote(out, s), args[1:], i+1
			continue
		}
		out = append(out, format[i])
	}
	return string(out)
}

func (d *decoder) ws() {
	for d.i < len(d.s) && (d.s[d.i] == ' ' || d.s[d.i] == '\t' || d.s[d.i] == '\n' || d.s[d.i] == '\r') {
		d.i++
	}
}

// null consumes a JSON null (which leaves the field as it was, as
// json.Unmarshal does) and reports whether there was one.
func (d *decoder) null() bool {
	d.ws()
	if len(d.s)-d.i >= 4 && d.s[d.i:d.i+4] == "null" {
		d.i += 4
		return true
	}
	return false
}

func (d *decoder) expect(c byte) error {
	d.ws()
	if d.i >= len(d.s) || d.s[d.i] != c {
		return d.errorf("want %q", string(c))
	}
	d.i++
	return nil
}

// object decodes {"key": value, ...}, calling field for each key with the
// decoder positioned at the value.
func (d *decoder) object(field func(key string) error) error {
	if err := d.expect('{'); err != nil {
		return err
	}
	if d.ws(); d.i < len(d.s) && d.s[d.i] == '}' {
		d.i++
		return nil
	}
	for {
		var key string
		if err := d.string(&key); err != nil {
			return err
		}
		if err := d.expect(':'); err != nil {
			return err
		}
		if err := field(key); err != nil {
			return err
		}
		if d.ws(); d.i < len(d.s) && d.s[d.i] == ',' {
			d.i++
			continue
		}
		return d.expect('}')
	}
}

// array decodes [v, ...] (or null), calling elem at each value.
func (d *decoder) array(elem func() error) error {
	if d.null() {
		return nil
	}
	if err := d.expect('['); err != nil {
		return err
	}
	if d.ws(); d.i < len(d.s) && d.s[d.i] == ']' {
		d.i++
		return nil
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		if d.ws(); d.i < len(d.s) && d.s[d.i] == ',' {
			d.i++
			continue
		}
		return d.expect(']')
	}
}

func (d *decoder) strings(dst *[]string) error {
	if d.null() {
		return nil
	}
	out := []string{}
	err := d.array(func() error {
		var s string
		err := d.string(&s)
		out = append(out, s)
		return err
	})
	*dst = out
	return err
}

func (d *decoder) bool(dst *bool) error {
	d.ws()
	switch {
	case d.null():
	case len(d.s)-d.i >= 4 && d.s[d.i:d.i+4] == "true":
		*dst, d.i = true, d.i+4
	case len(d.s)-d.i >= 5 && d.s[d.i:d.i+5] == "false":
		*dst, d.i = false, d.i+5
	default:
		return d.errorf("want true or false")
	}
	return nil
}

// int decodes an integer (no fraction or exponent) that fits an int.
func (d *decoder) int(dst *int) error {
	if d.null() {
		return nil
	}
	start := d.i
	if d.i < len(d.s) && d.s[d.i] == '-' {
		d.i++
	}
	digits := d.i
	for d.i < len(d.s) && '0' <= d.s[d.i] && d.s[d.i] <= '9' {
		d.i++
	}
	if d.i == digits || (d.s[digits] == '0' && d.i-digits > 1) {
		return d.errorf("want an integer")
	}
	if d.i < len(d.s) && (d.s[d.i] == '.' || d.s[d.i] == 'e' || d.s[d.i] == 'E') {
		return d.errorf("want an integer")
	}
	n, err := strconv.ParseInt(d.s[start:d.i], 10, strconv.IntSize)
	if err != nil {
		return d.errorf("integer out of range")
	}
	*dst = int(n)
	return nil
}

// string decodes a JSON string: escapes as RFC 8259 has them, surrogate
// pairs joined, a lone surrogate or invalid UTF-8 read as U+FFFD (as
// encoding/json does).
func (d *decoder) string(dst *string) error {
	if d.null() {
		return nil
	}
	if err := d.expect('"'); err != nil {
		return err
	}
	var out []byte
	for {
		if d.i >= len(d.s) {
			return d.errorf("unterminated string")
		}
		c := d.s[d.i]
		switch {
		case c == '"':
			d.i++
			*dst = string(out)
			return nil
		case c < 0x20:
			return d.errorf("control character in a string")
		case c == '\\':
			if d.i+1 >= len(d.s) {
				return d.errorf("unterminated string")
			}
			e := d.s[d.i+1]
			d.i += 2
			switch e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r, ok := d.hex4()
				if !ok {
					return d.errorf("bad \\u escape")
				}
				if utf16.IsSurrogate(r) {
					r2 := rune(-1)
					if len(d.s)-d.i >= 6 && d.s[d.i] == '\\' && d.s[d.i+1] == 'u' {
						save := d.i
						d.i += 2
						if r2, ok = d.hex4(); !ok {
							return d.errorf("bad \\u escape")
						}
						if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
							out = utf8.AppendRune(out, dec)
							continue
						}
						d.i = save // not a pair: the second escape stands alone
					}
					r = utf8.RuneError
				}
				out = utf8.AppendRune(out, r)
			default:
				return d.errorf("bad escape in a string")
			}
		case c < utf8.RuneSelf:
			out = append(out, c)
			d.i++
		default:
			r, n := utf8.DecodeRuneInString(d.s[d.i:])
			out = utf8.AppendRune(out, r) // invalid UTF-8 becomes U+FFFD
			d.i += n
		}
	}
}

func (d *decoder) hex4() (rune, bool) {
	if len(d.s)-d.i < 4 {
		return 0, false
	}
	n, err := strconv.ParseUint(d.s[d.i:d.i+4], 16, 16)
	if err != nil {
		return 0, false
	}
	d.i += 4
	return rune(n), true
}
