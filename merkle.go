package replication

import (
	"crypto/sha256"
	"math/bits"
)

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

// merkleRoot returns the tree hash MTH of the given leaf hashes. It does
// not modify leaves and does not allocate. Callers never ask for the root
// of no leaves; for them it returns the zero hash.
func merkleRoot(leaves [][hashLen]byte) [hashLen]byte {
	n := len(leaves)
	if n == 0 {
		return [hashLen]byte{}
	}
	// Push the leaves one by one onto a stack of the roots of complete
	// subtrees, merging the two topmost whenever they have the same size,
	// as when counting in binary. After leaf i, the stack holds one
	// subtree per set bit of i+1, largest at the bottom.
	var stack [64][hashLen]byte
	top := 0
	for i := range leaves {
		stack[top] = leaves[i]
		top++
		for c := uint64(i + 1); c&1 == 0; c >>= 1 {
			top--
			stack[top-1] = nodeHash(&stack[top-1], &stack[top])
		}
	}
	// The subtrees on the stack, each a power of two larger than the next,
	// are exactly the left subtrees of the MTH split from the root down, so
	// the root folds them from the top of the stack to the bottom.
	root := stack[top-1]
	for j := top - 2; j >= 0; j-- {
		root = nodeHash(&stack[j], &root)
	}
	return root
}

// merklePath appends to dst the audit path PATH(i, D[0:n]) of RFC 6962,
// section 2.1.1, for leaf i of leaves (0 <= i < n = len(leaves)), and
// returns the extended slice. The sibling nearest the leaf comes first and
// the child of the root last. It hashes O(n) nodes. It panics if i is out
// of range.
func merklePath(dst [][hashLen]byte, leaves [][hashLen]byte, i int) [][hashLen]byte {
	if i < 0 || i >= len(leaves) {
		panic("replication: merkle path index out of range")
	}
	start := len(dst)
	// Walk from the root down to the leaf, appending each sibling; this
	// gives them in root-first order, reversed below.
	lo, hi := 0, len(leaves)
	for hi-lo > 1 {
		k := splitPoint(hi - lo)
		if i < lo+k {
			dst = append(dst, merkleRoot(leaves[lo+k:hi]))
			hi = lo + k
		} else {
			dst = append(dst, merkleRoot(leaves[lo:lo+k]))
			lo += k
		}
	}
	p := dst[start:]
	for a, b := 0, len(p)-1; a < b; a, b = a+1, b-1 {
		p[a], p[b] = p[b], p[a]
	}
	return dst
}

// splitPoint returns the largest power of two below n, for n > 1.
func splitPoint(n int) int {
	return 1 << (bits.Len(uint(n-1)) - 1)
}

// merkleVerify reports whether path, as made by merklePath, proves that h
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
