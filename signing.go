package replication

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
)

// Sizes of the parts of a hybrid signature and public key.
const (
	edSigSize     = ed25519.SignatureSize // 64
	mlSigSize     = mldsa65.SignatureSize // 3309
	hybridSigSize = edSigSize + mlSigSize

	edPubSize     = ed25519.PublicKeySize // 32
	mlPubSize     = mldsa65.PublicKeySize // 1952
	hybridPubSize = edPubSize + mlPubSize

	signingSeedSize = ed25519.SeedSize // 32
)

// signContext is the ML-DSA context string and the Ed25519 message prefix
// that bind signatures to this use.
const signContext = "replication/quasar attestation v1"

// signContextBytes is signContext as a byte slice. It must not be modified.
var signContextBytes = []byte(signContext)

// mlSeedInfo is the HKDF info string that derives the ML-DSA-65 seed from
// a signing key's seed.
const mlSeedInfo = "replication signing key ML-DSA-65 v1"

// Text forms of signing and public keys: a prefix followed by the key's
// bytes in unpadded URL-safe base64.
const (
	signingKeyTextPrefix = "replication-sk1:"
	publicKeyTextPrefix  = "replication-pk1:"
)

var keyEncoding = base64.RawURLEncoding.Strict()

// SigningKey is a validator's hybrid signing key: an Ed25519 key and an
// ML-DSA-65 key, both derived from one 32-byte secret seed. Each signature
// it makes is the concatenation of an Ed25519 signature and an ML-DSA-65
// signature over the same message, and verification requires both, so a
// signature stays unforgeable as long as either scheme is unbroken.
//
// The zero SigningKey holds no key; use NewSigningKey, GenerateSigningKey or
// UnmarshalText. Formatting a SigningKey with the fmt package prints only
// its public key's fingerprint, never the seed. A SigningKey is safe for
// concurrent use once made.
type SigningKey struct {
	seed [signingSeedSize]byte
	ed   ed25519.PrivateKey
	ml   *mldsa65.PrivateKey
	pub  PublicKey
}

// NewSigningKey derives a signing key from a 32-byte secret seed. The
// Ed25519 key is the one ed25519.NewKeyFromSeed derives from seed; the
// ML-DSA-65 key is derived from a 32-byte seed computed as
// HKDF-SHA256 of seed, with no salt and the info string
// "replication signing key ML-DSA-65 v1". The same seed always gives the
// same key. A seed of any other length is refused with an error wrapping
// ErrInvalidConfig.
func NewSigningKey(seed []byte) (*SigningKey, error) {
	if len(seed) != signingSeedSize {
		return nil, fmt.Errorf("%w: signing key seed is %d bytes, want %d",
			ErrInvalidConfig, len(seed), signingSeedSize)
	}
	mlSeed, err := hkdf.Key(sha256.New, seed, nil, mlSeedInfo, mldsa65.SeedSize)
	if err != nil {
		// HKDF-SHA256 fails only for outputs longer than 255 hash blocks.
		panic("replication: HKDF failed: " + err.Error())
	}
	k := &SigningKey{ed: ed25519.NewKeyFromSeed(seed)}
	copy(k.seed[:], seed)
	mlPub, mlPriv := mldsa65.NewKeyFromSeed((*[mldsa65.SeedSize]byte)(mlSeed))
	k.ml = mlPriv

	raw := make([]byte, hybridPubSize)
	copy(raw, k.ed.Public().(ed25519.PublicKey))
	mlPub.Pack((*[mlPubSize]byte)(raw[edPubSize:]))
	k.pub = PublicKey{&publicKey{ed: ed25519.PublicKey(raw[:edPubSize]), ml: mlPub, raw: raw}}
	return k, nil
}

// GenerateSigningKey returns a new signing key made from a seed read from
// crypto/rand.
func GenerateSigningKey() (*SigningKey, error) {
	var seed [signingSeedSize]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, err
	}
	return NewSigningKey(seed[:])
}

// Public returns the public key of k. It is the zero PublicKey if k holds
// no key.
func (k *SigningKey) Public() PublicKey {
	return k.pub
}

// MarshalText encodes k, including its secret seed, as
// "replication-sk1:" followed by the seed in unpadded URL-safe base64. It
// fails if k holds no key.
func (k *SigningKey) MarshalText() ([]byte, error) {
	if k.ml == nil {
		return nil, errors.New("replication: marshal of an empty signing key")
	}
	b := make([]byte, 0, len(signingKeyTextPrefix)+keyEncoding.EncodedLen(signingSeedSize))
	b = append(b, signingKeyTextPrefix...)
	return keyEncoding.AppendEncode(b, k.seed[:]), nil
}

// UnmarshalText sets k to the key that text, as produced by MarshalText,
// encodes. Errors wrap ErrInvalidConfig; k is unchanged on error.
func (k *SigningKey) UnmarshalText(text []byte) error {
	seed, err := decodeKeyText(text, signingKeyTextPrefix, signingSeedSize, "signing key")
	if err != nil {
		return err
	}
	nk, err := NewSigningKey(seed)
	if err != nil {
		return err
	}
	*k = *nk
	return nil
}

// String returns "SigningKey(" followed by the fingerprint of k's public
// key and ")". It never reveals the seed.
func (k SigningKey) String() string {
	return "SigningKey(" + k.pub.String() + ")"
}

// Format implements fmt.Formatter so that every verb, %#v included, prints
// what String returns and never the seed.
func (k SigningKey) Format(f fmt.State, verb rune) {
	_, _ = io.WriteString(f, k.String())
}

// sign appends to dst a hybrid signature over msg, the Ed25519 signature
// followed by the ML-DSA-65 signature, and returns the extended slice.
// Ed25519 (pure mode) signs signContext, a zero byte and msg; ML-DSA-65
// signs msg with context signContext, deterministically, so that equal
// inputs give equal signatures. k must hold a key.
func (k *SigningKey) sign(dst, msg []byte) []byte {
	var buf [edMsgBufSize]byte
	edSig := ed25519.Sign(k.ed, edMessage(&buf, msg))

	n := len(dst)
	dst = slices.Grow(dst, hybridSigSize)[:n+hybridSigSize]
	copy(dst[n:], edSig)
	err := mldsa65.SignTo(k.ml, msg, signContextBytes, false, dst[n+edSigSize:])
	if err != nil {
		// SignTo fails only for a context above 255 bytes or when it
		// cannot read randomness, which deterministic signing never does.
		panic("replication: ML-DSA-65 signing failed: " + err.Error())
	}
	return dst
}

// PublicKey is a validator's hybrid public key: an Ed25519 public key and
// an ML-DSA-65 public key. It is a small immutable value, cheap to copy and
// safe for concurrent use. The zero PublicKey is no key (see IsZero):
// nothing verifies under it and it cannot be marshaled.
type PublicKey struct {
	k *publicKey
}

// publicKey is the parsed form of a PublicKey, never modified once made.
type publicKey struct {
	ed  ed25519.PublicKey  // raw[:edPubSize]
	ml  *mldsa65.PublicKey // unpacked from raw[edPubSize:]
	raw []byte             // ed ‖ packed ml, hybridPubSize bytes
}

// IsZero reports whether p is the zero PublicKey, which holds no key.
func (p PublicKey) IsZero() bool {
	return p.k == nil
}

// Equal reports whether p and o are the same key. Two zero keys are equal.
func (p PublicKey) Equal(o PublicKey) bool {
	if p.k == nil || o.k == nil {
		return p.k == o.k
	}
	return p.k == o.k || bytes.Equal(p.k.raw, o.k.raw)
}

// Bytes returns the encoding of p: the 32-byte Ed25519 public key followed
// by the 1952-byte packed ML-DSA-65 public key. It returns nil for the zero
// key. The result is a copy the caller may modify.
func (p PublicKey) Bytes() []byte {
	if p.k == nil {
		return nil
	}
	return bytes.Clone(p.k.raw)
}

// ParsePublicKey parses a public key encoded by PublicKey.Bytes. An input
// of the wrong length or whose Ed25519 part is not the canonical encoding
// of a curve point is refused with an error wrapping ErrInvalidConfig.
// Every input of the right length is a well-formed ML-DSA-65 key.
func ParsePublicKey(b []byte) (PublicKey, error) {
	if len(b) != hybridPubSize {
		return PublicKey{}, fmt.Errorf("%w: public key is %d bytes, want %d",
			ErrInvalidConfig, len(b), hybridPubSize)
	}
	if !validEd25519Point(b[:edPubSize]) {
		return PublicKey{}, fmt.Errorf("%w: public key: invalid Ed25519 key", ErrInvalidConfig)
	}
	raw := bytes.Clone(b)
	ml := new(mldsa65.PublicKey)
	ml.Unpack((*[mlPubSize]byte)(raw[edPubSize:]))
	return PublicKey{&publicKey{ed: ed25519.PublicKey(raw[:edPubSize]), ml: ml, raw: raw}}, nil
}

// MarshalText encodes p as "replication-pk1:" followed by p.Bytes() in
// unpadded URL-safe base64. It fails for the zero key.
func (p PublicKey) MarshalText() ([]byte, error) {
	if p.k == nil {
		return nil, errors.New("replication: marshal of a zero public key")
	}
	b := make([]byte, 0, len(publicKeyTextPrefix)+keyEncoding.EncodedLen(hybridPubSize))
	b = append(b, publicKeyTextPrefix...)
	return keyEncoding.AppendEncode(b, p.k.raw), nil
}

// UnmarshalText sets p to the key that text, as produced by MarshalText,
// encodes. Errors wrap ErrInvalidConfig; p is unchanged on error.
func (p *PublicKey) UnmarshalText(text []byte) error {
	raw, err := decodeKeyText(text, publicKeyTextPrefix, hybridPubSize, "public key")
	if err != nil {
		return err
	}
	k, err := ParsePublicKey(raw)
	if err != nil {
		return err
	}
	*p = k
	return nil
}

// String returns a short fingerprint of p: "pk:" followed by the first 8
// bytes of the SHA-256 hash of p.Bytes() in hexadecimal, or "pk:none" for
// the zero key.
func (p PublicKey) String() string {
	if p.k == nil {
		return "pk:none"
	}
	sum := sha256.Sum256(p.k.raw)
	return "pk:" + hex.EncodeToString(sum[:8])
}

// verify reports whether sig is a valid hybrid signature of msg under p,
// as made by SigningKey.sign: it must be exactly hybridSigSize bytes and
// both its Ed25519 and its ML-DSA-65 part must verify. It reports false for
// the zero key.
func (p PublicKey) verify(msg, sig []byte) bool {
	if p.k == nil || len(sig) != hybridSigSize {
		return false
	}
	var buf [edMsgBufSize]byte
	if !ed25519.Verify(p.k.ed, edMessage(&buf, msg), sig[:edSigSize]) {
		return false
	}
	return mldsa65.Verify(p.k.ml, msg, signContextBytes, sig[edSigSize:])
}

// decodeKeyText decodes text made of prefix followed by exactly n bytes in
// unpadded URL-safe base64. Only the one canonical text of those bytes is
// accepted.
func decodeKeyText(text []byte, prefix string, n int, what string) ([]byte, error) {
	rest, ok := bytes.CutPrefix(text, []byte(prefix))
	if !ok {
		return nil, fmt.Errorf("%w: %s text does not start with %q", ErrInvalidConfig, what, prefix)
	}
	if len(rest) != keyEncoding.EncodedLen(n) {
		return nil, fmt.Errorf("%w: %s text has %d base64 characters, want %d",
			ErrInvalidConfig, what, len(rest), keyEncoding.EncodedLen(n))
	}
	b := make([]byte, n)
	m, err := keyEncoding.Decode(b, rest)
	if err != nil {
		return nil, fmt.Errorf("%w: %s text: %w", ErrInvalidConfig, what, err)
	}
	if m != n {
		// Decode skips line breaks, so the right number of characters
		// can still hold too few bytes.
		return nil, fmt.Errorf("%w: %s text holds %d bytes, want %d", ErrInvalidConfig, what, m, n)
	}
	return b, nil
}

// edMsgBufSize is the size of the stack buffer that holds the message
// Ed25519 signs; a longer one is built on the heap.
const edMsgBufSize = 1024

// edMessage returns the message Ed25519 signs for msg: signContext, a zero
// byte and msg. It builds it in buf if it fits.
func edMessage(buf *[edMsgBufSize]byte, msg []byte) []byte {
	b := buf[:0]
	if n := len(signContext) + 1 + len(msg); n > edMsgBufSize {
		b = make([]byte, 0, n)
	}
	b = append(b, signContext...)
	b = append(b, 0)
	return append(b, msg...)
}

// Constants of the Ed25519 curve -x² + y² = 1 + d·x²·y² over GF(p).
var (
	ed25519P = new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 255), big.NewInt(19))
	ed25519D = func() *big.Int {
		// d = -121665 / 121666 mod p.
		d := new(big.Int).ModInverse(big.NewInt(121666), ed25519P)
		d.Mul(d, big.NewInt(-121665))
		return d.Mod(d, ed25519P)
	}()
)

// validEd25519Point reports whether b, 32 bytes, is the canonical
// encoding of a point on the Ed25519 curve (RFC 8032, section 5.1.3): the
// y coordinate below p and an x coordinate that exists, and is not zero if
// the sign bit is set. It runs in variable time; public keys are not
// secret.
func validEd25519Point(b []byte) bool {
	var be [edPubSize]byte
	for i := range be {
		be[i] = b[edPubSize-1-i]
	}
	sign := be[0] >> 7
	be[0] &= 0x7f
	y := new(big.Int).SetBytes(be[:])
	if y.Cmp(ed25519P) >= 0 {
		return false
	}
	// x² = (y² - 1) / (d·y² + 1). The denominator is never zero since -1/d
	// is not a square mod p.
	y2 := new(big.Int).Mul(y, y)
	y2.Mod(y2, ed25519P)
	u := new(big.Int).Sub(y2, big.NewInt(1))
	v := new(big.Int).Mul(ed25519D, y2)
	v.Add(v, big.NewInt(1))
	v.ModInverse(v, ed25519P)
	x2 := u.Mul(u, v)
	x2.Mod(x2, ed25519P)
	if x2.Sign() == 0 {
		return sign == 0
	}
	return big.Jacobi(x2, ed25519P) == 1
}
