package replication

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// tcpReadCert parses the first PEM certificate in file.
func tcpReadCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(file)
	require.NoError(t, err)
	block, _ := pem.Decode(data)
	require.NotNil(t, block, "no PEM block in %s", file)
	require.Equal(t, "CERTIFICATE", block.Type)
	cert, err := x509.ParseCertificate(block.Bytes)
	require.NoError(t, err)
	return cert
}

func TestGenerateDevCerts_Files(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "certs")
	ids := []string{"a", "node-b"}
	require.NoError(t, GenerateDevCerts(dir, ids))

	modes := map[string]os.FileMode{
		"ca.pem": 0o644, "ca-key.pem": 0o600,
		"a.pem": 0o644, "a-key.pem": 0o600,
		"node-b.pem": 0o644, "node-b-key.pem": 0o600,
		"a-signing.key": 0o600, "node-b-signing.key": 0o600, "validator-keys.json": 0o644,
	}
	for name, mode := range modes {
		fi, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err, name)
		require.Equal(t, mode, fi.Mode().Perm(), name)
	}

	ca := tcpReadCert(t, filepath.Join(dir, "ca.pem"))
	require.True(t, ca.IsCA)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, id := range ids {
		cert := tcpReadCert(t, filepath.Join(dir, id+".pem"))
		require.Equal(t, id, cert.Subject.CommonName)
		require.Equal(t, []string{id}, cert.DNSNames)
		require.ElementsMatch(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, cert.ExtKeyUsage)
		pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
		require.True(t, ok, "ECDSA key")
		require.Equal(t, elliptic.P256(), pub.Curve)
		require.WithinDuration(t, time.Now().Add(devCertValidity), cert.NotAfter, time.Minute)
		for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			_, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}})
			require.NoError(t, err, "%s verifies for usage %v", id, usage)
		}

		cfg, err := LoadTLSConfig(filepath.Join(dir, id+".pem"), filepath.Join(dir, id+"-key.pem"), filepath.Join(dir, "ca.pem"))
		require.NoError(t, err)
		require.Len(t, cfg.Certificates, 1)
		require.NotNil(t, cfg.RootCAs)
		require.NotNil(t, cfg.ClientCAs)
		require.Nil(t, cfg.CurvePreferences, "keep Go's post-quantum default")
	}

	// The signing keys and the public keys match, and start a signed
	// replicator.
	keys, err := LoadValidatorKeys(filepath.Join(dir, "validator-keys.json"))
	require.NoError(t, err)
	require.Len(t, keys, len(ids))
	hub := NewMemoryHub()
	defer hub.Close()
	for _, id := range ids {
		sk, err := LoadSigningKey(filepath.Join(dir, id+"-signing.key"))
		require.NoError(t, err)
		require.True(t, sk.Public().Equal(keys[id]), id)
		cfg := QuasarConfig{NodeID: id, Validators: ids, Transport: hub.Connect(id), SigningKey: sk, ValidatorKeys: keys}
		require.NoError(t, cfg.Validate())
	}
	other, err := LoadSigningKey(filepath.Join(dir, "node-b-signing.key"))
	require.NoError(t, err)
	require.False(t, other.Public().Equal(keys["a"]), "keys differ per node")
}

func TestLoadKeys_Errors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
		return p
	}
	_, err := LoadSigningKey(filepath.Join(dir, "missing"))
	require.ErrorIs(t, err, os.ErrNotExist)
	_, err = LoadSigningKey(write("bad.key", "replication-sk1:short\n"))
	require.ErrorIs(t, err, ErrInvalidConfig)
	require.Contains(t, err.Error(), "bad.key")
	_, err = LoadValidatorKeys(write("bad.json", `{"a": "replication-pk1:short"}`))
	require.ErrorIs(t, err, ErrInvalidConfig)
	_, err = LoadValidatorKeys(write("notjson.json", `[`))
	require.Error(t, err)
}

func TestGenerateDevCerts_Overwrite(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "a-key.pem")
	require.NoError(t, os.WriteFile(key, []byte("old"), 0o644))
	require.NoError(t, GenerateDevCerts(dir, []string{"a"}))
	fi, err := os.Stat(key)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "an existing key file is tightened to 0600")
}

func TestGenerateDevCerts_InvalidIDs(t *testing.T) {
	cases := []struct {
		name string
		ids  []string
	}{
		{"no ids", nil},
		{"empty id", []string{"a", ""}},
		{"duplicate", []string{"a", "a"}},
		{"path separator", []string{"../evil"}},
		{"backslash", []string{`a\b`}},
		{"dot dot", []string{".."}},
		{"collides with CA", []string{"ca"}},
		{"collides with key file", []string{"a-key"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "out")
			err := GenerateDevCerts(dir, tc.ids)
			require.ErrorIs(t, err, ErrInvalidConfig)
			_, statErr := os.Stat(dir)
			require.True(t, os.IsNotExist(statErr), "nothing written")
		})
	}
}

func TestLoadTLSConfig_Errors(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, GenerateDevCerts(dir, []string{"a"}))
	notPEM := filepath.Join(dir, "not.pem")
	require.NoError(t, os.WriteFile(notPEM, []byte("hello"), 0o644))
	cert, key, ca := filepath.Join(dir, "a.pem"), filepath.Join(dir, "a-key.pem"), filepath.Join(dir, "ca.pem")

	cases := []struct {
		name          string
		cert, key, ca string
	}{
		{"missing cert", filepath.Join(dir, "nope.pem"), key, ca},
		{"missing key", cert, filepath.Join(dir, "nope.pem"), ca},
		{"mismatched key", cert, filepath.Join(dir, "ca-key.pem"), ca},
		{"missing CA", cert, key, filepath.Join(dir, "nope.pem")},
		{"CA not PEM", cert, key, notPEM},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := LoadTLSConfig(tc.cert, tc.key, tc.ca)
			require.ErrorIs(t, err, ErrInvalidConfig)
			require.Nil(t, cfg)
		})
	}
}
