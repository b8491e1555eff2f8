package replication

// Development certificates for TCPTransport's mutual TLS.
//
// FOR DEVELOPMENT AND TESTS ONLY. GenerateDevCerts creates a throw-away
// certificate authority whose private key sits next to the node keys in one
// directory, with no revocation, no rotation and no protection beyond file
// permissions. Production clusters should issue node certificates from a
// real PKI; LoadTLSConfig works with any PEM files whose node certificates
// name the node ID in the Subject CommonName or a DNS SAN.

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// devCertValidity is how long the certificates GenerateDevCerts writes are
// valid.
const devCertValidity = 365 * 24 * time.Hour

// GenerateDevCerts writes a development certificate authority and one
// certificate per node into dir, creating dir (mode 0700) if needed:
//
//	ca.pem, ca-key.pem          the CA certificate and its key
//	<id>.pem, <id>-key.pem      one pair per node ID
//	<id>-signing.key            one signing key per node ID (QuasarConfig.SigningKey)
//	validator-keys.json         every node's public key, by node ID (QuasarConfig.ValidatorKeys)
//
// TLS keys are ECDSA P-256 in PKCS#8 PEM, written with mode 0600;
// certificates are written with mode 0644. Signing keys (random, in
// SigningKey's text form) are written with mode 0600, the public keys
// (a JSON object of PublicKey text forms) with mode 0644; LoadSigningKey
// and LoadValidatorKeys read them. Each node certificate has Subject CommonName
// and a DNS SAN equal to the node ID, both the ServerAuth and ClientAuth
// extended key usages, and a validity of one year (starting one hour in the
// past to tolerate clock skew). Existing files are overwritten.
//
// The output is FOR DEVELOPMENT ONLY: see the comment at the top of
// certs.go. Node IDs must be non-empty, unique, and usable as file names
// (no path separators, not "." or "..", not "ca"); otherwise the error wraps
// ErrInvalidConfig and nothing is written.
//
// GenerateDevCerts is safe for concurrent use as long as the calls use
// different directories.
func GenerateDevCerts(dir string, nodeIDs []string) error {
	if err := validateDevCertIDs(nodeIDs); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("replication: dev certs: %w", err)
	}

	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("replication: dev certs: CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          mustSerial(),
		Subject:               pkix.Name{CommonName: "replication dev CA", Organization: []string{"replication development"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(devCertValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("replication: dev certs: CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("replication: dev certs: CA certificate: %w", err)
	}

	type devFile struct {
		name string
		data []byte
		mode os.FileMode
	}
	caKeyDER, err := x509.MarshalPKCS8PrivateKey(caKey)
	if err != nil {
		return fmt.Errorf("replication: dev certs: CA key: %w", err)
	}
	files := []devFile{
		{"ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644},
		{"ca-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: caKeyDER}), 0o600},
	}
	publics := make(map[string]PublicKey, len(nodeIDs))
	for _, id := range nodeIDs {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("replication: dev certs: key for %q: %w", id, err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: mustSerial(),
			Subject:      pkix.Name{CommonName: id, Organization: []string{"replication development"}},
			DNSNames:     []string{id},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(devCertValidity),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("replication: dev certs: certificate for %q: %w", id, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return fmt.Errorf("replication: dev certs: key for %q: %w", id, err)
		}
		sk, err := GenerateSigningKey()
		if err != nil {
			return fmt.Errorf("replication: dev certs: signing key for %q: %w", id, err)
		}
		skText, _ := sk.MarshalText() // a generated key always marshals
		publics[id] = sk.Public()
		files = append(files,
			devFile{id + ".pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644},
			devFile{id + "-key.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600},
			devFile{id + "-signing.key", append(skText, '\n'), 0o600},
		)
	}
	pubJSON, err := json.MarshalIndent(publics, "", "  ")
	if err != nil {
		return fmt.Errorf("replication: dev certs: public keys: %w", err)
	}
	files = append(files, devFile{"validator-keys.json", append(pubJSON, '\n'), 0o644})
	for _, f := range files {
		if err := writeFileMode(filepath.Join(dir, f.name), f.data, f.mode); err != nil {
			return fmt.Errorf("replication: dev certs: %w", err)
		}
	}
	return nil
}

// LoadSigningKey reads a signing key in its text form (SigningKey's
// MarshalText, as GenerateDevCerts writes it) from file, ignoring
// surrounding white space. Errors name the file; a malformed key's wraps
// ErrInvalidConfig.
func LoadSigningKey(file string) (*SigningKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("replication: signing key: %w", err)
	}
	k := new(SigningKey)
	if err := k.UnmarshalText(bytes.TrimSpace(b)); err != nil {
		return nil, fmt.Errorf("replication: signing key %s: %w", file, err)
	}
	return k, nil
}

// LoadValidatorKeys reads the validators' public keys from a JSON object
// mapping each validator ID to its PublicKey text form (as
// GenerateDevCerts writes validator-keys.json). Errors name the file; a
// malformed key's wraps ErrInvalidConfig.
func LoadValidatorKeys(file string) (map[string]PublicKey, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("replication: validator keys: %w", err)
	}
	var keys map[string]PublicKey
	if err := json.Unmarshal(b, &keys); err != nil {
		return nil, fmt.Errorf("replication: validator keys %s: %w", file, err)
	}
	return keys, nil
}

// validateDevCertIDs checks that every node ID is usable as a file name and
// a certificate name.
func validateDevCertIDs(ids []string) error {
	if len(ids) == 0 {
		return fmt.Errorf("%w: dev certs: no node IDs", ErrInvalidConfig)
	}
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		switch {
		case id == "":
			return fmt.Errorf("%w: dev certs: empty node ID", ErrInvalidConfig)
		case id == "." || id == ".." || id == "ca" || strings.ContainsAny(id, `/\`+"\x00") || strings.HasSuffix(id, "-key"):
			return fmt.Errorf("%w: dev certs: node ID %q is not usable as a file name", ErrInvalidConfig, id)
		case seen[id]:
			return fmt.Errorf("%w: dev certs: duplicate node ID %q", ErrInvalidConfig, id)
		}
		seen[id] = true
	}
	return nil
}

// writeFileMode writes data to name and makes sure the file has mode perm
// even if it already existed with another one.
func writeFileMode(name string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// mustSerial returns a random 128-bit certificate serial number. crypto/rand
// never fails on supported platforms (it crashes the program instead).
func mustSerial() *big.Int {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[0] &= 0x7f // keep it positive and at most 20 octets
	return new(big.Int).SetBytes(b)
}

// LoadTLSConfig reads a node's certificate and key and the cluster CA from
// PEM files (such as those GenerateDevCerts writes) and returns a TLS
// configuration for TCPConfig.TLS: Certificates holds the node's pair, and
// both RootCAs (to check peers this node dials) and ClientCAs (to check
// peers that dial it) hold the CA. MinVersion is TLS 1.3; no other field is
// set, so Go's default key exchange (X25519MLKEM768, post-quantum hybrid)
// stays on.
//
// Errors wrap ErrInvalidConfig, and the underlying file or parse error.
// LoadTLSConfig is safe for concurrent use; each call returns a new config.
func LoadTLSConfig(certFile, keyFile, caFile string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: load key pair %s, %s: %w", ErrInvalidConfig, certFile, keyFile, err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("%w: load CA: %w", ErrInvalidConfig, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%w: load CA %s: no PEM certificate found", ErrInvalidConfig, caFile)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		RootCAs:      pool,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
	}, nil
}
