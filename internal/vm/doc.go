// Package vm holds the domain types of a microVM: its spec, its recorded state, the
// state machine, names and sizes, and their validation. It does no I/O.
package vm
