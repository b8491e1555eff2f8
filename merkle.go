package replication

import "crypto/sha256"

// The Merkle tree here is the one of RFC 6962 (Certificate Transparency),
// section 2.1, with its domain separation between leaves and inner nodes:
//
//	leafHash(d)    = SHA-256(0x00 ‖ d)
//	nodeHash(l, r) = SHA-256(0x01 ‖ l ‖ r)
//
// The tree hash of n > 1 leaf hashes D[0:n] splits at k, the largest power
// of two below n: MTH(D[0:n]) = nodeHash(MTH(D[0:k]), MTH(D[k:n])). The
// tree hash of a single leaf hash is that leaf hash. The functions below
// take leaf hashes, not leaves: callers hash each leaf with leafHash first.

// hashLen is the length of a Merkle tree hash.
const hashLen = sha256.Size

// leafHash returns the hash of a Merkle tree leaf: SHA-256 of a zero byte
// followed by leaf.
func leafHash(leaf []byte) [hashLen]byte {
	if len(leaf) < leafHashBuf {
		// A vote's leaf: hashed from a copy on the stack, without the
		// allocation and the calls of a hash.Hash.
		var buf [leafHashBuf]byte
		n := copy(buf[1:], leaf)
		return sha256.Sum256(buf[:1+n])
	}
	h := sha256.New()
	h.Write([]byte{0x00})
	h.Write(leaf)
	var out [hashLen]byte
	h.Sum(out[:0])
	return out
}

// leafHashBuf bounds the leaves leafHash hashes from a stack copy.
const leafHashBuf = 64

// nodeHash returns the hash of an inner Merkle tree node whose children
// hash to l and r: SHA-256 of the byte 0x01 followed by l and r.
func nodeHash(l, r *[hashLen]byte) [hashLen]byte {
	var buf [1 + 2*hashLen]byte
	buf[0] = 0x01
	copy(buf[1:], l[:])
	copy(buf[1+hashLen:], r[:])
	return sha256.Sum256(buf[:])
}

// merkleTree is a Merkle tree kept whole, so that an audit path costs no
// hashing: levels[0] holds the leaf hashes, and levels[k+1][j] the node
// over levels[k][2j] and levels[k][2j+1], or levels[k][2j] itself when it
// is the last of its level and has no sibling. Built bottom up this way,
// the tree is RFC 6962's: a subtree of the MTH split that is not a power of
// two is exactly a run of lone last nodes moving up unchanged. The top
// level holds the root.
type merkleTree struct {
	levels [][][hashLen]byte
}

// newMerkleTree builds the tree over the given leaf hashes (at least one),
// which it keeps, not copies. It hashes n-1 nodes and allocates twice.
func newMerkleTree(leaves [][hashLen]byte) merkleTree {
	above, height := 0, 1
	for n := len(leaves); n > 1; n = (n + 1) / 2 {
		above += (n + 1) / 2
		height++
	}
	nodes := make([][hashLen]byte, above)
	t := merkleTree{levels: make([][][hashLen]byte, 1, height)}
	t.levels[0] = leaves
	for cur := leaves; len(cur) > 1; {
		next := nodes[:(len(cur)+1)/2]
		nodes = nodes[len(next):]
		for j := range next {
			if 2*j+1 < len(cur) {
				next[j] = nodeHash(&cur[2*j], &cur[2*j+1])
			} else {
				next[j] = cur[2*j]
			}
		}
		t.levels = append(t.levels, next)
		cur = next
	}
	return t
}

// root returns the tree hash MTH.
func (t merkleTree) root() [hashLen]byte { return t.levels[len(t.levels)-1][0] }

// path appends to dst the audit path PATH(i, D[0:n]) of RFC 6962, section
// 2.1.1, for leaf i (0 <= i < n), and returns the extended slice: the
// sibling nearest the leaf first, the child of the root last. A level where
// the node has no sibling adds nothing. It panics if i is out of range.
func (t merkleTree) path(dst [][hashLen]byte, i int) [][hashLen]byte {
	if i < 0 || i >= len(t.levels[0]) {
		panic("replication: merkle path index out of range")
	}
	for _, level := range t.levels[:len(t.levels)-1] {
		if sib := i ^ 1; sib < len(level) {
			dst = append(dst, level[sib])
		}
		i >>= 1
	}
	return dst
}

// merkleVerify reports whether path, as made by merkleTree.path, proves that h
// is the hash of leaf i in a tree of n leaves whose tree hash is root. It
// follows the verification algorithm of RFC 9162, section 2.1.3.2, and
// reports false if i >= n or the path has the wrong length.
func merkleVerify(h [hashLen]byte, i, n uint64, path [][hashLen]byte, root [hashLen]byte) bool {
	if i >= n {
		return false
	}
	fn, sn := i, n-1
	r := h
	for j := range path {
		if sn == 0 {
			return false
		}
		if fn&1 == 1 || fn == sn {
			r = nodeHash(&path[j], &r)
			if fn&1 == 0 {
				// The node is the last of its level with no right
				// sibling: it moves up unchanged until it is a right child
				// or reaches the left edge.
				for fn&1 == 0 && fn != 0 {
					fn >>= 1
					sn >>= 1
				}
			}
		} else {
			r = nodeHash(&r, &path[j])
		}
		fn >>= 1
		sn >>= 1
	}
	return sn == 0 && r == root
}
