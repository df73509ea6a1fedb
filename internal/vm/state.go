package vm

import "fmt"

// State is where a VM is in its life.
type State string

// The states a VM passes through. Exited VMs stay listed (ls -a) until `down` removes them.
const (
	StateCreating State = "creating" // record made, supervisor preparing disks and network
	StateStarting State = "starting" // hypervisor running, guest agent not answering yet
	StateRunning  State = "running"  // guest agent answered
	StatePaused   State = "paused"   // vCPUs stopped, everything else held
	StateSleeping State = "sleeping" // state saved to disk, no process; keeps its address
	StateStopping State = "stopping" // stop requested
	StateExited   State = "exited"   // hypervisor gone, host resources released
)

var transitions = map[State][]State{
	StateCreating: {StateStarting, StateStopping, StateExited, StateSleeping},
	StateStarting: {StateRunning, StateStopping, StateExited, StateSleeping},
	StateRunning:  {StatePaused, StateSleeping, StateStopping, StateExited},
	StatePaused:   {StateRunning, StateSleeping, StateStopping, StateExited},
	StateSleeping: {StateCreating, StateExited},
	StateStopping: {StateExited},
	StateExited:   {},
}

// Active reports whether a VM in this state may still own host resources (a process,
// a TAP, an address, a saved state).
func (s State) Active() bool { return s != StateExited }

// HasProcess reports whether a VM in this state is owned by a live supervisor (or
// should be: reconcile cleans up after one that died).
func (s State) HasProcess() bool { return s != StateExited && s != StateSleeping }

// CanTransition reports whether from -> to is a legal move.
func CanTransition(from, to State) bool {
	for _, t := range transitions[from] {
		if t == to {
			return true
		}
	}
	return false
}

// Transition returns an error naming the states when from -> to is not allowed.
func Transition(from, to State) error {
	if from == to || CanTransition(from, to) {
		return nil
	}
	return fmt.Errorf("cannot move a VM from %s to %s", from, to)
}
