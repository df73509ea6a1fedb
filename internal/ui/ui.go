// Package ui renders mvmctl output: tables for people, JSON for scripts, and progress
// lines that appear only on a terminal.
package ui

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"
)

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool { return term.IsTerminal(int(f.Fd())) }

// Table writes aligned columns.
type Table struct {
	tw *tabwriter.Writer
}

// NewTable starts a table with a header row.
func NewTable(w io.Writer, header ...string) *Table {
	t := &Table{tw: tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)}
	t.Row(header...)
	return t
}

// Row adds a row.
func (t *Table) Row(cols ...string) { fmt.Fprintln(t.tw, strings.Join(cols, "\t")) }

// Flush writes the table out.
func (t *Table) Flush() error { return t.tw.Flush() }

// JSON writes v as indented JSON.
func JSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// Progress prints step lines to a terminal and nothing otherwise.
type Progress struct {
	w       io.Writer
	enabled bool
	start   time.Time
}

// NewProgress shows steps on w when it is a terminal and quiet is false.
func NewProgress(w *os.File, quiet bool) *Progress {
	return &Progress{w: w, enabled: !quiet && IsTerminal(w), start: time.Now()}
}

// Step reports a step.
func (p *Progress) Step(msg string) {
	if p.enabled {
		fmt.Fprintf(p.w, "\033[2m[%5.1fs]\033[0m %s\n", time.Since(p.start).Seconds(), msg)
	}
}

// Duration renders an age the way `docker ps` does: "3 seconds", "5 minutes", "2 hours".
func Duration(d time.Duration) string {
	switch {
	case d < time.Second:
		return "less than a second"
	case d < time.Minute:
		return plural(int(d.Seconds()), "second")
	case d < time.Hour:
		return plural(int(d.Minutes()), "minute")
	case d < 48*time.Hour:
		return plural(int(d.Hours()), "hour")
	}
	return plural(int(d.Hours()/24), "day")
}

func plural(n int, unit string) string {
	if n == 1 {
		return "1 " + unit
	}
	return fmt.Sprintf("%d %ss", n, unit)
}

// Printable makes text that came from a guest safe to print on the host's terminal:
// control characters (escape sequences could rewrite the screen) become visible escapes.
func Printable(s string) string { return printable(s, true) }

// PrintableLine is Printable for a value that must stay on its line (a field in a
// listing): newlines and tabs are escaped too, so a guest cannot forge lines.
func PrintableLine(s string) string { return printable(s, false) }

func printable(s string, multiline bool) string {
	var b strings.Builder
	for _, r := range s {
		if (multiline && (r == '\n' || r == '\t')) || (r >= 0x20 && r != 0x7f && !(r >= 0x80 && r < 0xa0)) {
			b.WriteRune(r)
			continue
		}
		fmt.Fprintf(&b, "\\x%02x", r)
	}
	return b.String()
}
