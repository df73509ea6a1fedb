package vm

import (
	"fmt"
	"math/rand/v2"
	"regexp"
)

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

// MaxNameLen is the longest VM name: a DNS label.
const MaxNameLen = 63

// ValidateName checks a user-given VM (or network, template...) name.
func ValidateName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("name is empty: use 1-%d characters of a-z, 0-9 and '-'", MaxNameLen)
	case len(name) > MaxNameLen:
		return fmt.Errorf("name %q is %d characters long: use at most %d", name, len(name), MaxNameLen)
	case !nameRE.MatchString(name):
		return fmt.Errorf("name %q is invalid: use only a-z, 0-9 and '-', not starting or ending with '-'", name)
	}
	return nil
}

var adjectives = []string{
	"amber", "bold", "brave", "brisk", "calm", "clever", "cosmic", "crisp", "dapper", "eager",
	"fancy", "fierce", "gentle", "glad", "happy", "hardy", "jolly", "keen", "lively", "lucid",
	"merry", "mighty", "nimble", "noble", "plucky", "proud", "quick", "quiet", "rapid", "shiny",
	"silent", "sleek", "snappy", "steady", "sunny", "swift", "tidy", "vivid", "witty", "zesty",
}

var nouns = []string{
	"badger", "beacon", "comet", "condor", "falcon", "ferret", "gecko", "heron", "ibis", "jaguar",
	"kestrel", "koala", "lemur", "lynx", "marmot", "meerkat", "narwhal", "ocelot", "otter", "panda",
	"pelican", "puffin", "quokka", "raven", "robin", "salmon", "sparrow", "tapir", "tiger", "toucan",
	"turtle", "walrus", "wombat", "yak", "zebra", "orca", "bison", "crane", "dingo", "egret",
}

// RandomName returns an adjective-noun name such as "brisk-otter". Callers check uniqueness.
func RandomName(r *rand.Rand) string {
	return adjectives[r.IntN(len(adjectives))] + "-" + nouns[r.IntN(len(nouns))]
}
