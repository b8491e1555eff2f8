package replication

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func testSeed(b byte) []byte {
	return bytes.Repeat([]byte{b}, signingSeedSize)
}

func testSigningKey(t testing.TB, b byte) *SigningKey {
	t.Helper()
	k, err := NewSigningKey(testSeed(b))
	require.NoError(t, err)
	return k
}

func TestSigningKeyDerivation(t *testing.T) {
	k1 := testSigningKey(t, 1)
	k1again := testSigningKey(t, 1)
	k2 := testSigningKey(t, 2)
	require.True(t, k1.Public().Equal(k1again.Public()))
	require.Equal(t, k1.Public().Bytes(), k1again.Public().Bytes())
	require.False(t, k1.Public().Equal(k2.Public()))
	require.Len(t, k1.Public().Bytes(), hybridPubSize)
	require.Equal(t, k1.Public().String(), k1again.Public().String())
	require.NotEqual(t, k1.Public().String(), k2.Public().String())

	// Keys that differ in either half differ.
	b1, b2 := k1.Public().Bytes(), k2.Public().Bytes()
	require.NotEqual(t, b1[:edPubSize], b2[:edPubSize])
	require.NotEqual(t, b1[edPubSize:], b2[edPubSize:])

	// Signing is deterministic.
	msg := []byte("message")
	require.Equal(t, k1.sign(nil, msg), k1again.sign(nil, msg))

	g1, err := GenerateSigningKey()
	require.NoError(t, err)
	g2, err := GenerateSigningKey()
	require.NoError(t, err)
	require.False(t, g1.Public().Equal(g2.Public()))
	require.True(t, g1.Public().verify(msg, g1.sign(nil, msg)))
}

func TestSigningKeyBadSeed(t *testing.T) {
	for _, n := range []int{0, 1, 31, 33, 64} {
		k, err := NewSigningKey(make([]byte, n))
		require.Nil(t, k)
		require.Error(t, err)
		require.True(t, errors.Is(err, ErrInvalidConfig), "len %d: %v", n, err)
	}
	_, err := NewSigningKey(nil)
	require.ErrorIs(t, err, ErrInvalidConfig)
}

func TestSignVerify(t *testing.T) {
	k := testSigningKey(t, 1)
	other := testSigningKey(t, 2)
	pub := k.Public()

	for _, msg := range [][]byte{nil, {}, []byte("hello"), bytes.Repeat([]byte{7}, 100), bytes.Repeat([]byte{9}, 5000)} {
		sig := k.sign(nil, msg)
		require.Len(t, sig, hybridSigSize)
		require.True(t, pub.verify(msg, sig), "len %d", len(msg))
		require.False(t, other.Public().verify(msg, sig))
		require.False(t, PublicKey{}.verify(msg, sig))
	}

	// sign appends to dst.
	msg := []byte("attest this")
	dst := k.sign([]byte("head"), msg)
	require.Equal(t, []byte("head"), dst[:4])
	require.True(t, pub.verify(msg, dst[4:]))
	require.Equal(t, k.sign(nil, msg), dst[4:])

	// Appending into spare capacity does not move dst.
	buf := make([]byte, 2, 2+hybridSigSize)
	out := k.sign(buf, msg)
	require.Equal(t, &buf[0], &out[0])
	require.True(t, pub.verify(msg, out[2:]))

	sig := k.sign(nil, msg)

	// Any flipped byte of the message.
	for i := range msg {
		m := bytes.Clone(msg)
		m[i] ^= 0x01
		require.False(t, pub.verify(m, sig), "message byte %d", i)
	}
	require.False(t, pub.verify(append(bytes.Clone(msg), 0), sig))
	require.False(t, pub.verify(msg[:len(msg)-1], sig))

	// Flipped bytes of the signature, in both halves.
	positions := []int{0, 1, 31, 32, 63, edSigSize, edSigSize + 1, edSigSize + 100,
		edSigSize + mlSigSize/2, hybridSigSize - 2, hybridSigSize - 1}
	for _, p := range positions {
		for _, mask := range []byte{0x01, 0x80, 0xff} {
			s := bytes.Clone(sig)
			s[p] ^= mask
			require.False(t, pub.verify(msg, s), "signature byte %d mask %#x", p, mask)
		}
	}

	// Wrong lengths, and halves that are valid on their own only.
	require.False(t, pub.verify(msg, nil))
	require.False(t, pub.verify(msg, sig[:hybridSigSize-1]))
	require.False(t, pub.verify(msg, append(bytes.Clone(sig), 0)))
	require.False(t, pub.verify(msg, sig[:edSigSize]))
	otherSig := other.sign(nil, msg)
	mixed := append(bytes.Clone(sig[:edSigSize]), otherSig[edSigSize:]...)
	require.False(t, pub.verify(msg, mixed))
	mixed = append(bytes.Clone(otherSig[:edSigSize]), sig[edSigSize:]...)
	require.False(t, pub.verify(msg, mixed))

	// A signature over another message.
	require.False(t, pub.verify(msg, k.sign(nil, []byte("something else"))))
}

func TestPublicKeyZero(t *testing.T) {
	var z PublicKey
	require.True(t, z.IsZero())
	require.False(t, testSigningKey(t, 1).Public().IsZero())
	require.True(t, z.Equal(PublicKey{}))
	require.False(t, z.Equal(testSigningKey(t, 1).Public()))
	require.False(t, testSigningKey(t, 1).Public().Equal(z))
	require.Nil(t, z.Bytes())
	require.Equal(t, "pk:none", z.String())
	require.False(t, z.verify([]byte("x"), make([]byte, hybridSigSize)))
	_, err := z.MarshalText()
	require.Error(t, err)

	var sk SigningKey
	require.True(t, sk.Public().IsZero())
	_, err = sk.MarshalText()
	require.Error(t, err)
	require.Equal(t, "SigningKey(pk:none)", sk.String())
}

func TestPublicKeyBytes(t *testing.T) {
	pub := testSigningKey(t, 3).Public()
	b := pub.Bytes()
	p2, err := ParsePublicKey(b)
	require.NoError(t, err)
	require.True(t, pub.Equal(p2))

	// Bytes returns a copy, and ParsePublicKey keeps one.
	b[0] ^= 0xff
	require.True(t, pub.Equal(p2))
	require.NotEqual(t, b, pub.Bytes())

	msg := []byte("m")
	require.True(t, p2.verify(msg, testSigningKey(t, 3).sign(nil, msg)))

	for _, n := range []int{0, edPubSize, hybridPubSize - 1, hybridPubSize + 1} {
		_, err := ParsePublicKey(make([]byte, n))
		require.ErrorIs(t, err, ErrInvalidConfig, "len %d", n)
	}

	// An Ed25519 half that is no curve point: y = 2 has no x.
	bad := pub.Bytes()
	clear(bad[:edPubSize])
	bad[0] = 2
	_, err = ParsePublicKey(bad)
	require.ErrorIs(t, err, ErrInvalidConfig)

	// A y coordinate of p or above is not canonical.
	nonCanonical := pub.Bytes()
	for i := range edPubSize {
		nonCanonical[i] = 0xff
	}
	nonCanonical[0] = 0xed
	nonCanonical[31] = 0x7f
	_, err = ParsePublicKey(nonCanonical)
	require.ErrorIs(t, err, ErrInvalidConfig)

	// y = 1, x = 0 is the identity; with the sign bit set it is refused.
	ident := pub.Bytes()
	clear(ident[:edPubSize])
	ident[0] = 1
	_, err = ParsePublicKey(ident)
	require.NoError(t, err)
	ident[31] = 0x80
	_, err = ParsePublicKey(ident)
	require.ErrorIs(t, err, ErrInvalidConfig)
}

func TestPublicKeyValidEd25519Point(t *testing.T) {
	// Every Ed25519 key made from a seed is a valid point, as is its
	// negation (the sign bit flipped).
	for i := range 50 {
		k := testSigningKey(t, byte(i))
		b := k.Public().Bytes()[:edPubSize]
		require.True(t, validEd25519Point(b), "key %d", i)
		b[31] ^= 0x80
		require.True(t, validEd25519Point(b), "negated key %d", i)
	}
}

func TestPublicKeyText(t *testing.T) {
	pub := testSigningKey(t, 4).Public()
	text, err := pub.MarshalText()
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(text), "replication-pk1:"))
	require.Equal(t, "replication-pk1:"+base64.RawURLEncoding.EncodeToString(pub.Bytes()), string(text))

	var p2 PublicKey
	require.NoError(t, p2.UnmarshalText(text))
	require.True(t, pub.Equal(p2))

	body := text[len("replication-pk1:"):]
	bad := map[string]string{
		"empty":          "",
		"prefix only":    "replication-pk1:",
		"wrong prefix":   "replication-sk1:" + string(body),
		"no prefix":      string(body),
		"bad base64":     "replication-pk1:" + strings.Repeat("*", len(body)),
		"padded":         "replication-pk1:" + base64.URLEncoding.EncodeToString(pub.Bytes()),
		"std alphabet":   "replication-pk1:" + base64.RawStdEncoding.EncodeToString(bytes.Repeat([]byte{0xff}, hybridPubSize)),
		"short":          "replication-pk1:" + string(body[:len(body)-4]),
		"long":           "replication-pk1:" + string(body) + "AAAA",
		"one char short": "replication-pk1:" + string(body[:len(body)-1]),
		"newline":        "replication-pk1:" + string(body[:10]) + "\n" + string(body[11:]),
		"trailing bits":  "replication-pk1:" + string(body[:len(body)-1]) + "B",
	}
	for name, s := range bad {
		p3 := pub
		err := p3.UnmarshalText([]byte(s))
		require.ErrorIs(t, err, ErrInvalidConfig, name)
		require.True(t, p3.Equal(pub), "%s: key changed on error", name)
	}
}

func TestSigningKeyText(t *testing.T) {
	seed := testSeed(5)
	k := testSigningKey(t, 5)
	text, err := k.MarshalText()
	require.NoError(t, err)
	seedText := base64.RawURLEncoding.EncodeToString(seed)
	require.Equal(t, "replication-sk1:"+seedText, string(text))

	var k2 SigningKey
	require.NoError(t, k2.UnmarshalText(text))
	require.True(t, k.Public().Equal(k2.Public()))
	msg := []byte("m")
	require.Equal(t, k.sign(nil, msg), k2.sign(nil, msg))

	for _, s := range []string{
		"",
		"replication-pk1:" + seedText,
		seedText,
		"replication-sk1:" + strings.Repeat("!", len(seedText)),
		"replication-sk1:" + seedText[:len(seedText)-2],
		"replication-sk1:" + seedText + "AA",
		"replication-sk1:" + base64.URLEncoding.EncodeToString(seed),
	} {
		k3 := *k
		err := k3.UnmarshalText([]byte(s))
		require.ErrorIs(t, err, ErrInvalidConfig, "%q", s)
		require.True(t, k3.Public().Equal(k.Public()))
	}

	// No formatting reveals the seed.
	str := k.String()
	require.Equal(t, "SigningKey("+k.Public().String()+")", str)
	for _, f := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q", "%d"} {
		for _, v := range []any{k, *k} {
			out := fmt.Sprintf(f, v)
			require.NotContains(t, out, seedText, f)
			require.NotContains(t, out, fmt.Sprintf("%x", seed), f)
			require.NotContains(t, out, fmt.Sprint(seed), f)
			require.Contains(t, out, k.Public().String(), f)
		}
	}
}

func TestPublicKeyString(t *testing.T) {
	s := testSigningKey(t, 6).Public().String()
	require.True(t, strings.HasPrefix(s, "pk:"))
	require.Len(t, s, len("pk:")+16)
}

func TestPublicKeyJSON(t *testing.T) {
	in := map[string]PublicKey{
		"a": testSigningKey(t, 7).Public(),
		"b": testSigningKey(t, 8).Public(),
	}
	data, err := json.Marshal(in)
	require.NoError(t, err)
	require.Contains(t, string(data), `"replication-pk1:`)

	var out map[string]PublicKey
	require.NoError(t, json.Unmarshal(data, &out))
	require.Len(t, out, 2)
	for id, k := range in {
		require.True(t, k.Equal(out[id]), id)
	}

	require.Error(t, json.Unmarshal([]byte(`{"a":"replication-pk1:AAAA"}`), &out))
	_, err = json.Marshal(map[string]PublicKey{"z": {}})
	require.Error(t, err)
}

func FuzzParsePublicKeyText(f *testing.F) {
	k, err := NewSigningKey(testSeed(9))
	require.NoError(f, err)
	text, err := k.Public().MarshalText()
	require.NoError(f, err)
	f.Add(text)
	f.Add([]byte(""))
	f.Add([]byte("replication-pk1:"))
	f.Add([]byte("replication-pk1:AAAA"))
	f.Add(text[:len(text)-1])
	f.Add(append(bytes.Clone(text), 'A'))
	f.Add(bytes.Replace(text, []byte("pk1"), []byte("sk1"), 1))
	broken := bytes.Clone(text)
	broken[len("replication-pk1:")+3] = '\n'
	f.Add(broken)

	f.Fuzz(func(t *testing.T, in []byte) {
		var p PublicKey
		if err := p.UnmarshalText(in); err != nil {
			require.ErrorIs(t, err, ErrInvalidConfig)
			require.True(t, p.IsZero())
			return
		}
		require.False(t, p.IsZero())
		out, err := p.MarshalText()
		require.NoError(t, err)
		require.Equal(t, in, out, "accepted text is not canonical")
		var q PublicKey
		require.NoError(t, q.UnmarshalText(out))
		require.True(t, p.Equal(q))
		require.False(t, p.verify([]byte("m"), make([]byte, hybridSigSize)))
	})
}

// BenchmarkSign signs a different message each time: ML-DSA signing
// repeats a round a number of times that depends on the message (a fixed
// one would time one draw, not the mean).
func BenchmarkSign(b *testing.B) {
	k := testSigningKey(b, 1)
	msg := bytes.Repeat([]byte{0x5a}, 100)
	sig := make([]byte, 0, hybridSigSize)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		msg[0], msg[1], msg[2] = byte(i), byte(i>>8), byte(i>>16)
		i++
		sig = k.sign(sig[:0], msg)
	}
}

func BenchmarkVerify(b *testing.B) {
	k := testSigningKey(b, 1)
	pub := k.Public()
	msg := bytes.Repeat([]byte{0x5a}, 100)
	sig := k.sign(nil, msg)
	b.ReportAllocs()
	for b.Loop() {
		if !pub.verify(msg, sig) {
			b.Fatal("verify failed")
		}
	}
}

func FuzzSigningKeyText(f *testing.F) {
	text, err := testSigningKey(f, 7).MarshalText()
	require.NoError(f, err)
	f.Add(text)
	f.Add([]byte("replication-sk1:"))
	f.Add(text[:len(text)-1])
	f.Add(bytes.Replace(text, []byte("sk1"), []byte("pk1"), 1))
	f.Fuzz(func(t *testing.T, in []byte) {
		var k SigningKey
		if err := k.UnmarshalText(in); err != nil {
			require.ErrorIs(t, err, ErrInvalidConfig)
			require.True(t, k.Public().IsZero())
			return
		}
		out, err := k.MarshalText()
		require.NoError(t, err)
		require.Equal(t, in, out, "accepted text is not canonical")
		msg := []byte("m")
		require.True(t, k.Public().verify(msg, k.sign(nil, msg)))
	})
}
