package replication

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// This file holds TCPTransport's TLS identity: the client and server
// configurations of mutual TLS, and how a certificate names a node ID and
// is checked against the configured CA.

// clientTLSConfig returns the config for dialing peer id: the caller's TLS
// config, cloned, with verification replaced by chain verification against
// RootCAs plus the check that the certificate names id.
func (t *TCPTransport) clientTLSConfig(id string) *tls.Config {
	base := t.cfg.TLS
	c := base.Clone()
	c.MinVersion = tls.VersionTLS13
	c.ServerName = id
	// Not insecure: VerifyConnection below verifies the chain against
	// RootCAs itself, then checks that the certificate names id, which Go's
	// hostname check cannot do for a CommonName.
	c.InsecureSkipVerify = true
	roots := base.RootCAs
	userVerify := base.VerifyConnection
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := verifyTCPPeerChain(cs.PeerCertificates, roots, x509.ExtKeyUsageServerAuth); err != nil {
			return err
		}
		if got, ok := t.certNode(cs.PeerCertificates[0]); !ok || got != id {
			return fmt.Errorf("replication: tcp peer certificate names %q, want node %q alone",
				certNodeNames(cs.PeerCertificates[0]), id)
		}
		if userVerify != nil {
			return userVerify(cs)
		}
		return nil
	}
	return c
}

// newServerTLSConfig returns the config for accepting peers: client
// certificates are required and verified by crypto/tls against ClientCAs (or
// RootCAs), and VerifyConnection checks that they name a configured peer.
func (t *TCPTransport) newServerTLSConfig() *tls.Config {
	base := t.cfg.TLS
	c := base.Clone()
	c.MinVersion = tls.VersionTLS13
	c.ClientAuth = tls.RequireAndVerifyClientCert
	if c.ClientCAs == nil {
		c.ClientCAs = base.RootCAs
	}
	c.SessionTicketsDisabled = true
	c.GetConfigForClient = nil // it would bypass the checks below
	userVerify := base.VerifyConnection
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("replication: tcp peer sent no certificate")
		}
		if _, ok := t.inboundPeerID(cs.PeerCertificates[0]); !ok {
			return fmt.Errorf("replication: tcp peer certificate names %q: not exactly one configured peer",
				certNodeNames(cs.PeerCertificates[0]))
		}
		if userVerify != nil {
			return userVerify(cs)
		}
		return nil
	}
	return c
}

// inboundPeerID returns the configured peer a dialer's certificate names.
func (t *TCPTransport) inboundPeerID(cert *x509.Certificate) (string, bool) {
	id, ok := t.certNode(cert)
	return id, ok && t.peerIDs[id]
}

// certNode returns the one configured node (a peer, or this node) that
// cert names in its CommonName or DNS SANs. ok is false when it names none,
// or more than one: such a certificate could pass for either.
func (t *TCPTransport) certNode(cert *x509.Certificate) (id string, ok bool) {
	for _, name := range certNodeNames(cert) {
		switch {
		case name == id: // named twice (CommonName and SAN)
		case name != t.cfg.NodeID && !t.peerIDs[name]: // not one of ours
		case id != "":
			return "", false
		default:
			id = name
		}
	}
	return id, id != ""
}

// tlsLeaf returns the parsed leaf of a configured certificate.
func tlsLeaf(c *tls.Certificate) (*x509.Certificate, error) {
	if c.Leaf != nil {
		return c.Leaf, nil
	}
	if len(c.Certificate) == 0 {
		return nil, errors.New("empty certificate chain")
	}
	return x509.ParseCertificate(c.Certificate[0])
}

// certNodeNames returns the names a certificate may identify a node by: the
// Subject CommonName (if any) followed by the DNS SANs.
func certNodeNames(cert *x509.Certificate) []string {
	names := make([]string, 0, 1+len(cert.DNSNames))
	if cert.Subject.CommonName != "" {
		names = append(names, cert.Subject.CommonName)
	}
	return append(names, cert.DNSNames...)
}

// certNamesNode reports whether cert names node id in its CommonName or a
// DNS SAN.
func certNamesNode(cert *x509.Certificate, id string) bool {
	return cert.Subject.CommonName == id || slices.Contains(cert.DNSNames, id)
}

// verifyTCPPeerChain verifies a peer's certificate chain against roots for
// the given extended key usage.
func verifyTCPPeerChain(certs []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage) error {
	if len(certs) == 0 {
		return errors.New("replication: tcp peer sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{usage},
	})
	if err != nil {
		return fmt.Errorf("replication: tcp peer certificate: %w", err)
	}
	return nil
}
