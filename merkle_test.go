package replication

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// referenceMerkleRoot computes MTH straight from its recursive definition.
func referenceMerkleRoot(leaves [][hashLen]byte) [hashLen]byte {
	n := len(leaves)
	if n == 1 {
		return leaves[0]
	}
	k := 1
	for k*2 < n {
		k *= 2
	}
	l := referenceMerkleRoot(leaves[:k])
	r := referenceMerkleRoot(leaves[k:])
	return nodeHash(&l, &r)
}

// referencePathSides returns, leaf-side first, whether each sibling on the
// audit path of leaf i in a tree of n leaves is a left sibling, from the
// recursive definition of PATH in RFC 6962.
func referencePathSides(i, n int) []bool {
	if n == 1 {
		return nil
	}
	k := 1
	for k*2 < n {
		k *= 2
	}
	if i < k {
		return append(referencePathSides(i, k), false)
	}
	return append(referencePathSides(i-k, n-k), true)
}

func testLeafHashes(n int) [][hashLen]byte {
	leaves := make([][hashLen]byte, n)
	for i := range leaves {
		leaves[i] = leafHash([]byte(fmt.Sprintf("leaf %d", i)))
	}
	return leaves
}

// referencePath computes PATH(i, D[0:n]) straight from its recursive
// definition, leaf-side first.
func referencePath(leaves [][hashLen]byte, i int) [][hashLen]byte {
	n := len(leaves)
	if n == 1 {
		return nil
	}
	k := 1
	for k*2 < n {
		k *= 2
	}
	if i < k {
		return append(referencePath(leaves[:k], i), referenceMerkleRoot(leaves[k:]))
	}
	return append(referencePath(leaves[k:], i-k), referenceMerkleRoot(leaves[:k]))
}

func TestMerkleTreeMatchesReference(t *testing.T) {
	for n := 1; n <= 70; n++ {
		leaves := testLeafHashes(n)
		orig := append([][hashLen]byte(nil), leaves...)
		tree := newMerkleTree(leaves)
		require.Equal(t, referenceMerkleRoot(leaves), tree.root(), "n=%d", n)
		for i := range n {
			require.Equal(t, referencePath(leaves, i), tree.path(nil, i), "n=%d i=%d", n, i)
		}
		require.Equal(t, orig, leaves, "newMerkleTree modified its input, n=%d", n)
	}
}

func TestMerkleKnownAnswer(t *testing.T) {
	// The test leaves of RFC 6962 used by Certificate Transparency
	// implementations.
	data := []string{
		"",
		"\x00",
		"\x10",
		"\x20\x21",
		"\x30\x31",
		"\x40\x41\x42\x43",
		"\x50\x51\x52\x53\x54\x55\x56\x57",
		"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
	}
	leaves := make([][hashLen]byte, len(data))
	for i, d := range data {
		leaves[i] = leafHash([]byte(d))
	}
	root := newMerkleTree(leaves).root()
	require.Equal(t, "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
		hex.EncodeToString(root[:]))
	// The empty leaf hashes to SHA-256 of a single zero byte.
	require.Equal(t, "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
		hex.EncodeToString(leaves[0][:]))
}

func TestMerkleLeafHash(t *testing.T) {
	for _, n := range []int{0, 1, 55, 56, 64, 1000} {
		leaf := make([]byte, n)
		for i := range leaf {
			leaf[i] = byte(i)
		}
		want := sha256.Sum256(append([]byte{0x00}, leaf...))
		require.Equal(t, want, leafHash(leaf), "len %d", n)
		require.Zero(t, testing.AllocsPerRun(10, func() { leafHash(leaf) }), "len %d", n)
	}
	l, r := leafHash([]byte("l")), leafHash([]byte("r"))
	want := sha256.Sum256(append(append([]byte{0x01}, l[:]...), r[:]...))
	require.Equal(t, want, nodeHash(&l, &r))
}

func TestMerklePathVerify(t *testing.T) {
	for n := 1; n <= 70; n++ {
		leaves := testLeafHashes(n)
		tree := newMerkleTree(leaves)
		root := tree.root()
		for i := 0; i < n; i++ {
			path := tree.path(nil, i)
			require.True(t, merkleVerify(leaves[i], uint64(i), uint64(n), path, root), "n=%d i=%d", n, i)

			// Another leaf hash or another root.
			other := leafHash([]byte("other"))
			require.False(t, merkleVerify(other, uint64(i), uint64(n), path, root))
			require.False(t, merkleVerify(leaves[i], uint64(i), uint64(n), path, other))

			// Any single changed byte of the path.
			for j := range path {
				for b := 0; b < hashLen; b++ {
					path[j][b] ^= 0x01
					require.False(t, merkleVerify(leaves[i], uint64(i), uint64(n), path, root),
						"n=%d i=%d path[%d][%d]", n, i, j, b)
					path[j][b] ^= 0x01
				}
			}

			// Any other index, including ones past the end.
			for j := 0; j < n+3; j++ {
				if j != i {
					require.False(t, merkleVerify(leaves[i], uint64(j), uint64(n), path, root),
						"n=%d i=%d claimed index %d", n, i, j)
				}
			}

			// Another tree size. An audit path does not bind the tree size
			// by itself: where leaf i has the same position (the same
			// sibling sides, leaf-side first) in trees of both sizes, the
			// path and root verify for either size. Everywhere else they
			// must not.
			for _, m := range []int{n - 1, n + 1} {
				want := i < m && slices.Equal(referencePathSides(i, m), referencePathSides(i, n))
				require.Equal(t, want, merkleVerify(leaves[i], uint64(i), uint64(m), path, root),
					"n=%d i=%d claimed size %d", n, i, m)
			}
			require.False(t, merkleVerify(leaves[i], uint64(i), 0, path, root))

			// A shorter or longer path.
			if len(path) > 0 {
				require.False(t, merkleVerify(leaves[i], uint64(i), uint64(n), path[:len(path)-1], root))
				require.False(t, merkleVerify(leaves[i], uint64(i), uint64(n), path[1:], root))
			}
			longer := append(append([][hashLen]byte(nil), path...), root)
			require.False(t, merkleVerify(leaves[i], uint64(i), uint64(n), longer, root))
			longer = append([][hashLen]byte{leaves[i]}, path...)
			require.False(t, merkleVerify(leaves[i], uint64(i), uint64(n), longer, root))
		}
	}
}

func TestMerklePathAppends(t *testing.T) {
	leaves := testLeafHashes(13)
	prefix := [hashLen]byte{0xaa}
	tree := newMerkleTree(leaves)
	dst := tree.path([][hashLen]byte{prefix}, 6)
	require.Equal(t, prefix, dst[0])
	require.Equal(t, tree.path(nil, 6), dst[1:])
	// Leaf-side first: the first sibling of leaf 6 is leaf 7.
	require.Equal(t, leaves[7], dst[1])
}

func TestMerkleVerifySizeNotBound(t *testing.T) {
	// Leaf 0 sits at the same position in trees of 3 and 4 leaves, so the
	// 3-leaf path and root also verify for a claimed size of 4; the size
	// must be bound to the root by other means.
	leaves := testLeafHashes(3)
	tree := newMerkleTree(leaves)
	path := tree.path(nil, 0)
	root := tree.root()
	require.True(t, merkleVerify(leaves[0], 0, 3, path, root))
	require.True(t, merkleVerify(leaves[0], 0, 4, path, root))
	// Leaf 2 does not: it is a right child in a tree of 3 but a left one
	// in a tree of 4.
	path = tree.path(nil, 2)
	require.False(t, merkleVerify(leaves[2], 2, 4, path, root))
}

func TestMerkleVerifyExtremes(t *testing.T) {
	var h [hashLen]byte
	require.False(t, merkleVerify(h, 0, 0, nil, h))
	require.True(t, merkleVerify(h, 0, 1, nil, h))
	require.False(t, merkleVerify(h, ^uint64(0), ^uint64(0), nil, h))
	require.False(t, merkleVerify(h, ^uint64(0)-1, ^uint64(0), make([][hashLen]byte, 64), h))
	require.False(t, merkleVerify(h, 0, ^uint64(0), make([][hashLen]byte, 100), h))
}

func TestMerkleTreeAllocs(t *testing.T) {
	leaves := testLeafHashes(1000)
	allocs := testing.AllocsPerRun(10, func() { newMerkleTree(leaves) })
	require.Equal(t, 2.0, allocs, "the levels and the nodes")
}

func BenchmarkMerkleTree1024(b *testing.B) {
	leaves := testLeafHashes(1024)
	b.ReportAllocs()
	for b.Loop() {
		newMerkleTree(leaves)
	}
}
