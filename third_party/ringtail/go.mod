// An empty stand-in for github.com/luxfi/ringtail v0.2.0: the engine's
// go.mod requires it, no package of this module imports it, and the Go
// module proxy does not serve it. Tools that load the whole module graph
// (go doc, go list -m all) need its go.mod to exist; builds never use it.
module github.com/luxfi/ringtail

go 1.21
