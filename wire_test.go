package replication

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// Tests of the Quasar wire format (wire.go) and fuzz targets for every
// decoder: decodeMessage, the proposal body, and the driver's
// receive path fed with arbitrary bytes.

// decodeMessage decodes the whole of msg at once.
func decodeMessage(msg []byte, maxFrame int, recs []record) ([]record, error) {
	m, err := readMessage(msg, maxFrame)
	if err != nil {
		return recs[:0], err
	}
	return m.read(recs, math.MaxInt)
}

// refs encodes references as a decoded after list or digest holds them.
func refs(rs ...nsRef) refList {
	var l refList
	for _, r := range rs {
		l.b = appendRef(l.b, r)
	}
	l.n = len(rs)
	return l
}

// nodes encodes NodeIDs as a decoded certificate holds its voters.
func nodes(ids ...nodeID) nodeList {
	var l nodeList
	for _, id := range ids {
		l = append(l, id[:]...)
	}
	return l
}

// blockRecord returns the record of a block of ps (at least one), which
// share the first one's proposer and after list.
func blockRecord(ps ...proposal) record {
	br := blockRec{proposer: ps[0].proposer, after: ps[0].after, count: len(ps)}
	for i := range ps {
		br.body = appendSlot(br.body, &ps[i].frame, ps[i].prev)
	}
	return record{typ: recBlock, blk: br}
}

// blockBody returns the body of a block record of ps.
func blockBody(ps ...proposal) []byte {
	r := blockRecord(ps...)
	return appendBlockBody(nil, &r.blk)
}

// appendBlockBody appends the body of block record br.
func appendBlockBody(b []byte, br *blockRec) []byte {
	b = append(b, br.proposer[:]...)
	b = appendAfter(b, br.after)
	b = binary.AppendUvarint(b, uint64(br.count))
	return append(b, br.body...)
}

// oneVote is voter's vote typ on the frame of a block of one frame.
func oneVote(block [idLen]byte, voter nodeID, typ byte) vote {
	return vote{block: block, voter: voter, count: 1, bits: []byte{typ}}
}

// frameID returns the ID of p's frame, as every node derives it.
func frameID(p *proposal) [idLen]byte {
	q := *p
	if q.raw == nil {
		q.raw = appendSlot(nil, &q.frame, q.prev)
	}
	return proposalID(&q)
}

// singleID returns the ID of the block of p's frame alone: what a vote on
// a proposal sent as a block of one frame names.
func singleID(p *proposal) [idLen]byte {
	id := frameID(p)
	return singleBlockID(&id)
}

// firstProposal returns the first frame of a decoded block or
// certificate, as a proposal.
func firstProposal(r *record) proposal {
	if r.typ == recCertificate {
		return r.prop
	}
	for _, p := range r.blk.slots() {
		return *p
	}
	return proposal{}
}

// wireSample holds one valid record of each type, built with the encoders.
type wireSample struct {
	name string
	rec  record
}

func wireSamples() []wireSample {
	f := Frame{OrgID: "org", Namespace: "ns", Seq: 7, Op: "put", Key: "k", Value: []byte("value")}
	p := proposal{frame: f, prev: 6, after: refs(nsRef{"o2", "n2", 1 << 40}, nsRef{"org", "other", 3}), proposer: validatorNodeID("node-0")}
	bare := proposal{frame: Frame{Seq: 1}, proposer: validatorNodeID("node-1")}
	id := singleID(&p)
	p2, p3 := p, p
	p2.frame.Namespace, p3.frame.OrgID, p3.frame.Seq, p3.prev = "ns2", "org3", 1, 0
	return []wireSample{
		{"block", blockRecord(p)},
		{"block minimal", blockRecord(bare)},
		{"block of three", blockRecord(p3, p, p2)}, // slots in increasing order
		{"vote commit", record{typ: recVote, vote: oneVote(id, validatorNodeID("node-1"), voteCommit)}},
		{"vote cancel", record{typ: recVote, vote: oneVote(id, validatorNodeID("node-2"), voteCancel)}},
		{"votes on a block of five", record{typ: recVote, vote: vote{block: id, voter: validatorNodeID("node-0"), count: 5,
			bits: []byte{voteCommit | voteCancel<<2 | voteCommit<<6, voteCancel}}}},
		{"certificate", record{typ: recCertificate, prop: p, voters: nodes(validatorNodeID("node-0"), validatorNodeID("node-1"))}},
		{"certificate no voters", record{typ: recCertificate, prop: bare}},
		{"fetch", record{typ: recFetch, block: id, who: validatorNodeID("node-1"), to: validatorNodeID("node-0")}},
		{"sync", record{typ: recSync, ref: nsRef{"org", "ns", 42}, who: validatorNodeID("node-2"), to: validatorNodeID("node-1")}},
		{"behind", record{typ: recBehind, ref: nsRef{"org", "ns", 42}, who: validatorNodeID("node-0"), to: validatorNodeID("node-2")}},
		{"digest", record{typ: recDigest, digest: refs(nsRef{"org", "ns", 9}, nsRef{"org", "ns2", 1})}},
		{"digest empty", record{typ: recDigest}},
		{"read", record{typ: recRead, ref: nsRef{"org", "ns", 0}, nonce: 7, who: validatorNodeID("node-1")}},
		{"read ack", record{typ: recReadAck, ref: nsRef{"org", "ns", 0}, nonce: 7, who: validatorNodeID("node-1"), to: validatorNodeID("node-2"),
			head: 9, voted: votedRef{ok: true, id: id, seq: 11, prev: 9}}},
		{"read ack without vote", record{typ: recReadAck, ref: nsRef{"org", "ns", 0}, nonce: 1 << 40, who: validatorNodeID("node-0"), to: validatorNodeID("node-2"), head: 3}},
		{"certificate with parts", record{typ: recCertificate, prop: p, voters: nodes(validatorNodeID("node-0"), validatorNodeID("node-1")),
			parts: sampleParts(samplePart(3, 2), samplePart(0, 0))}},
		{"attestation", record{typ: recAttestation, att: sampleAttestation().raw}},
		{"part request", record{typ: recPartRequest, block: id, who: validatorNodeID("node-1"), to: validatorNodeID("node-0")}},
		{"part", record{typ: recPart, block: id, who: validatorNodeID("node-2"), parts: sampleParts(samplePart(1023, 10))}},
	}
}

// samplePart is a part of leaf with a path of n made-up hashes.
func samplePart(leaf uint32, n int) votePart {
	p := votePart{att: &attestation{hash: sha256.Sum256([]byte{byte(leaf)})}, leaf: leaf}
	for i := range n {
		h := sha256.Sum256([]byte{byte(i), byte(leaf)})
		p.path = append(p.path, h[:]...)
	}
	return p
}

// sampleParts encodes parts as a decoded record holds them.
func sampleParts(parts ...votePart) partList {
	var b []byte
	for i := range parts {
		b = appendPart(b, &parts[i])
	}
	return partList{b: b, n: len(parts)}
}

// sampleAttestation is a made-up attestation (its signature does not
// verify).
func sampleAttestation() *attestation {
	root := sha256.Sum256([]byte("root"))
	raw := appendAttHeader(nil, &[nodeIDLen]byte{1, 2, 3}, 7, 9, &[hashLen]byte{4}, 1000, &root)
	raw = append(raw, make([]byte, hybridSigSize)...)
	a, _ := parseAttestation(raw)
	return a
}

// voteParts decodes l for the encoders.
func voteParts(l partList) []votePart {
	var out []votePart
	var pr partRec
	for l.next(&pr) {
		out = append(out, votePart{att: &attestation{hash: pr.att}, leaf: uint32(pr.leaf), path: pr.path})
	}
	return out
}

// appendRecord encodes r with the encoder of its type.
func appendRecord(b []byte, r *record) []byte {
	switch r.typ {
	case recBlock:
		b, s := beginRecord(b, recBlock)
		return endRecord(appendBlockBody(b, &r.blk), s)
	case recVote:
		return appendVoteRecord(b, &r.vote.block, &r.vote.voter, r.vote.count, r.vote.bits)
	case recCertificate:
		return appendCertificateRecord(b, &r.prop, r.voters, voteParts(r.parts))
	case recFetch, recPartRequest:
		return appendFetchRecord(b, r.typ, &r.block, &r.who, &r.to)
	case recAttestation:
		a, _ := parseAttestation(r.att)
		return appendAttestationRecord(b, a)
	case recPart:
		p := voteParts(r.parts)[0]
		return appendPartRecord(b, &r.block, &r.who, &p)
	case recSync, recBehind:
		return appendSyncRecord(b, r.typ, r.ref.org, r.ref.ns, r.ref.seq, &r.who, &r.to)
	case recDigest:
		return appendDigestRecord(b, slices.Collect(r.digest.all()))
	case recRead:
		return appendReadRecord(b, r.ref.org, r.ref.ns, r.nonce, &r.who)
	case recReadAck:
		return appendReadAckRecord(b, r.ref.org, r.ref.ns, r.nonce, &r.who, &r.to, r.head, r.voted)
	}
	panic(fmt.Sprintf("appendRecord: unknown type %d", r.typ))
}

// encodeMessage builds a message of recs with the wire.go encoders.
func encodeMessage(recs []record) []byte {
	b := newMessage(nil)
	for i := range recs {
		b = appendRecord(b, &recs[i])
	}
	return finishMessage(b, len(recs))
}

// comparableRecords returns recs without what a round trip may change: the
// signature (never re-encoded), the raw bytes a decoded proposal keeps, and
// the exact bytes of digests (a uvarint may arrive in a longer form than
// the encoder writes; proposals must be canonical).
func comparableRecords(recs []record) []record {
	canon := func(l refList) refList { return refs(slices.Collect(l.all())...) }
	out := make([]record, len(recs))
	for i, r := range recs {
		r.vote.sig = nil
		r.prop.raw = nil
		r.digest = canon(r.digest)
		out[i] = r
	}
	return out
}

func TestWire_RoundTrip(t *testing.T) {
	samples := wireSamples()
	for _, s := range samples {
		t.Run(s.name, func(t *testing.T) {
			msg := encodeMessage([]record{s.rec})
			got, err := decodeMessage(msg, 0, nil)
			require.NoError(t, err)
			require.Equal(t, comparableRecords([]record{s.rec}), comparableRecords(got))
		})
	}
	t.Run("batch of every type", func(t *testing.T) {
		var all []record
		for _, s := range samples {
			all = append(all, s.rec)
		}
		got, err := decodeMessage(encodeMessage(all), 0, make([]record, 0, 4))
		require.NoError(t, err)
		require.Equal(t, comparableRecords(all), comparableRecords(got))
	})
	t.Run("vote signature", func(t *testing.T) {
		id := [idLen]byte{1}
		voter := validatorNodeID("node-1")
		msg := newMessage(nil)
		msg = append(msg, recVote, idLen+nodeIDLen+2+3)
		msg = append(msg, id[:]...)
		msg = append(msg, voter[:]...)
		msg = append(msg, 1, voteCommit, 's', 'i', 'g')
		got, err := decodeMessage(finishMessage(msg, 1), 0, nil)
		require.NoError(t, err)
		require.Len(t, got, 1)
		require.Equal(t, []byte("sig"), got[0].vote.sig)
		require.Equal(t, voter, got[0].vote.voter)
	})
	t.Run("empty message", func(t *testing.T) {
		got, err := decodeMessage(finishMessage(newMessage(nil), 0), 0, nil)
		require.NoError(t, err)
		require.Empty(t, got)
	})
}

// wireMalformed are messages every decoder must refuse: short,
// truncated, garbage, wrong version, wrong lengths, huge counts and length
// prefixes. Each is also a seed of FuzzDecodeMessage.
func wireMalformed() []struct {
	name string
	msg  []byte
} {
	valid := encodeMessage([]record{wireSamples()[0].rec})
	withRecord := func(typ byte, body []byte) []byte {
		b := append(newMessage(nil), typ)
		b = binary.AppendUvarint(b, uint64(len(body)))
		return finishMessage(append(b, body...), 1)
	}
	huge := binary.AppendUvarint(nil, 1<<62)
	sample := firstProposal(&wireSamples()[0].rec)
	prop := appendProposal(nil, &sample)
	return []struct {
		name string
		msg  []byte
	}{
		{"empty", nil},
		{"version only", []byte{wireVersion}},
		{"wrong version", append([]byte{wireVersion + 1}, valid[1:]...)},
		{"previous version", append([]byte{wireVersion - 1}, valid[1:]...)},
		{"version zero", append([]byte{0}, valid[1:]...)},
		{"count above size", append([]byte{wireVersion}, huge...)},
		{"count overflows uvarint", []byte{wireVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"fewer records than count", finishMessage(append(newMessage(nil), valid[5:]...), 2)},
		{"truncated", valid[:len(valid)-1]},
		{"trailing bytes", append(bytes.Clone(valid), 0)},
		{"record length beyond message", append(append(newMessage(nil)[:1], 1, recFetch), huge...)},
		{"unknown record type", withRecord(99, []byte{1, 2, 3})},
		{"record type zero", withRecord(0, nil)},
		{"vote short", withRecord(recVote, make([]byte, idLen+nodeIDLen))},
		{"attestation short", withRecord(recAttestation, make([]byte, attLen-1))},
		{"attestation long", withRecord(recAttestation, make([]byte, attLen+1))},
		{"part request short", withRecord(recPartRequest, make([]byte, idLen+nodeIDLen))},
		{"part path too long", withRecord(recPart, append(make([]byte, idLen+nodeIDLen+hashLen+1), maxPathLen+1))},
		{"part leaf beyond a batch", withRecord(recPart, append(append(make([]byte, idLen+nodeIDLen+hashLen), binary.AppendUvarint(nil, attestLeaves)...), 0))},
		{"part path cut", withRecord(recPart, append(make([]byte, idLen+nodeIDLen+hashLen+1), 1))},
		{"certificate parts fewer than voters", func() []byte {
			r := wireSamples()[0].rec
			p := firstProposal(&r)
			part := samplePart(0, 0)
			return finishMessage(appendCertificateRecord(newMessage(nil), &p, nodes(validatorNodeID("a"), validatorNodeID("b")), []votePart{part}), 1)
		}()},
		{"vote count zero", withRecord(recVote, append(make([]byte, idLen+nodeIDLen), 0))},
		{"vote count above a block's", withRecord(recVote, append(binary.AppendUvarint(make([]byte, idLen+nodeIDLen), maxBlockFrames+1), make([]byte, 200)...))},
		{"votes cut", withRecord(recVote, append(make([]byte, idLen+nodeIDLen), 9, 0, 0))},
		{"votes padding not zero", withRecord(recVote, append(make([]byte, idLen+nodeIDLen), 3, 0x40))},
		{"block count zero", withRecord(recBlock, append(make([]byte, nodeIDLen), 0, 0))},
		{"block count above the limit", withRecord(recBlock, append(binary.AppendUvarint(append(make([]byte, nodeIDLen), 0), maxBlockFrames+1), make([]byte, 8*(maxBlockFrames+1))...))},
		{"block fewer slots than count", withRecord(recBlock, append(blockBody(proposal{frame: Frame{Seq: 1}}), make([]byte, 7)...))},
		{"key not UTF-8", encodeMessage([]record{blockRecord(proposal{frame: Frame{OrgID: "org", Namespace: "ns", Seq: 1, Key: "k\xff"}})})},
		{"fetch short", withRecord(recFetch, make([]byte, idLen+2*nodeIDLen-1))},
		{"fetch long", withRecord(recFetch, make([]byte, idLen+2*nodeIDLen+1))},
		{"fetch without requester", withRecord(recFetch, make([]byte, idLen))},
		{"block seq zero", withRecord(recBlock, blockBody(proposal{}))},
		{"block seq not above prev", withRecord(recBlock, blockBody(proposal{frame: Frame{Seq: 3}, prev: 3}))},
		{"block huge string length", withRecord(recBlock, append(append(make([]byte, nodeIDLen), 0, 1, 1), huge...))},
		{"block huge after count", withRecord(recBlock, append(make([]byte, nodeIDLen), huge...))},
		{"block without proposer", withRecord(recBlock, make([]byte, nodeIDLen-1))},
		{"block seq not in its shortest form", withRecord(recBlock, append(append(make([]byte, nodeIDLen), 0, 1, 0x87, 0x00), blockBody(proposal{frame: Frame{Seq: 7}})[nodeIDLen+3:]...))},
		{"block after list out of order", withRecord(recBlock, blockBody(proposal{frame: Frame{Seq: 2}, prev: 1,
			after: refList{b: appendRef(appendRef(nil, nsRef{"org", "b", 1}), nsRef{"org", "a", 1}), n: 2}}))},
		{"block after list naming a namespace twice", withRecord(recBlock, blockBody(proposal{frame: Frame{Seq: 2}, prev: 1,
			after: refList{b: appendRef(appendRef(nil, nsRef{"org", "a", 1}), nsRef{"org", "a", 2}), n: 2}}))},
		{"block frame twice", withRecord(recBlock, blockBody(proposal{frame: Frame{Seq: 2}}, proposal{frame: Frame{Seq: 2}}))},
		{"block slots out of order", withRecord(recBlock, blockBody(proposal{frame: Frame{Seq: 3}}, proposal{frame: Frame{Seq: 2}}))},
		{"block slot not UTF-8", withRecord(recBlock, blockBody(proposal{frame: Frame{Seq: 1}}, proposal{frame: Frame{Seq: 2, Op: "\xff"}}))},
		{"proposal seq not in its shortest form", withRecord(recCertificate, append(appendBytes(nil, append([]byte{0x87, 0x00}, prop[1:]...)), 0))},
		{"proposal without proposer", withRecord(recCertificate, append(appendBytes(nil, prop[:len(prop)-1]), 0))},
		{"certificate huge proposal length", withRecord(recCertificate, huge)},
		{"certificate huge voter count", withRecord(recCertificate, append(appendBytes(nil, prop), huge...))},
		{"certificate voter cut", withRecord(recCertificate, append(append(appendBytes(nil, prop), 2), make([]byte, nodeIDLen+3)...))},
		{"certificate proposal trailing", withRecord(recCertificate, append(appendBytes(nil, append(bytes.Clone(prop), 0)), 0))},
		{"sync without requester", withRecord(recSync, append(appendStr(appendStr(nil, "o"), "n"), 1))},
		{"behind short requester", withRecord(recBehind, append(append(appendStr(appendStr(nil, "o"), "n"), 1), make([]byte, nodeIDLen-1)...))},
		{"sync without validator asked", withRecord(recSync, append(append(appendStr(appendStr(nil, "o"), "n"), 1), make([]byte, nodeIDLen)...))},
		{"digest huge count", withRecord(recDigest, huge)},
		{"read without requester", withRecord(recRead, append(appendStr(appendStr(nil, "o"), "n"), 1))},
		{"read ack two votes", withRecord(recReadAck, append(append(append(appendStr(appendStr(nil, "o"), "n"), 1), make([]byte, 2*nodeIDLen)...), 3, 2))},
		{"read ack seq not above its position", withRecord(recReadAck, binary.AppendUvarint(binary.AppendUvarint(
			append(append(append(append(appendStr(appendStr(nil, "o"), "n"), 1), make([]byte, 2*nodeIDLen)...), 3, 1), make([]byte, idLen)...), 4), 4))},
		{"digest cut", withRecord(recDigest, append([]byte{2}, appendStr(appendStr(nil, "o"), "n")...))},
		{"garbage", []byte("\x01\x03garbage that is no message at all")},
	}
}

func TestWire_Malformed(t *testing.T) {
	for _, tc := range wireMalformed() {
		t.Run(tc.name, func(t *testing.T) {
			recs, err := decodeMessage(tc.msg, 0, make([]record, 0, 4))
			require.ErrorIs(t, err, ErrMalformed)
			require.Empty(t, recs, "records returned with an error")
		})
	}
}

func TestWire_FrameLimit(t *testing.T) {
	f := Frame{OrgID: "org", Namespace: "ns", Seq: 1, Op: "put", Key: "k", Value: make([]byte, 100)}
	for _, rec := range []record{blockRecord(proposal{frame: f}), {typ: recCertificate, prop: proposal{frame: f}}} {
		msg := encodeMessage([]record{rec})
		_, err := decodeMessage(msg, f.size(), nil)
		require.NoError(t, err, "a frame at the limit is accepted")
		recs, err := decodeMessage(msg, f.size()-1, nil)
		require.ErrorIs(t, err, ErrMalformed, "a frame above the limit is refused")
		require.Empty(t, recs)
	}
}

// FuzzDecodeMessage: decodeMessage never panics, never returns records with
// an error, refuses frames above the limit, and every message it accepts
// re-encodes (with the wire.go encoders) to a message that decodes to the
// same records.
func FuzzDecodeMessage(f *testing.F) {
	for _, s := range wireSamples() {
		f.Add(encodeMessage([]record{s.rec}))
	}
	for _, tc := range wireMalformed() {
		f.Add(tc.msg)
	}
	f.Fuzz(func(t *testing.T, msg []byte) {
		recs, err := decodeMessage(msg, 0, nil)
		if err != nil {
			require.ErrorIs(t, err, ErrMalformed)
			require.Empty(t, recs, "records returned with an error")
			return
		}
		re := encodeMessage(recs)
		again, err := decodeMessage(re, 0, nil)
		require.NoError(t, err, "re-encoding %x of %x does not decode", re, msg)
		require.Equal(t, comparableRecords(recs), comparableRecords(again))

		const limit = 96
		limited, err := decodeMessage(msg, limit, make([]record, 0, 2))
		if err != nil {
			require.ErrorIs(t, err, ErrMalformed)
			require.Empty(t, limited)
			big := false
			for i := range recs {
				switch r := &recs[i]; r.typ {
				case recCertificate:
					big = big || r.prop.frame.size() > limit
				case recBlock:
					for _, p := range r.blk.slots() {
						big = big || p.frame.size() > limit
					}
				}
			}
			require.True(t, big, "refused under a limit of %d with no frame above it: %v", limit, err)
			return
		}
		require.Equal(t, comparableRecords(recs), comparableRecords(limited))
	})
}

// FuzzProposalRoundTrip builds a proposal from arbitrary fields, encodes it
// with appendProposalRecord and requires that it decodes to the same
// proposal, with its encoding as the bytes its block ID hashes (or is
// refused exactly when Seq is 0 or not above prev, or a string is not
// UTF-8).
func FuzzProposalRoundTrip(f *testing.F) {
	f.Add(uint64(7), "org", "ns", "put", "k", []byte("v"), uint64(6), "org", "other", uint64(3), uint8(1), byte(0))
	f.Add(uint64(1), "", "", "", "", []byte(nil), uint64(0), "", "", uint64(0), uint8(0), byte(0xff))
	f.Add(uint64(1<<64-1), "\xff<&>", "\u2028", "del", "\x00", []byte{0}, uint64(1<<63), "a", "b", uint64(1<<64-1), uint8(5), byte(1))
	f.Add(uint64(3), "org", "ns", "put", "k", []byte("v"), uint64(3), "", "", uint64(0), uint8(0), byte(0))
	f.Fuzz(func(t *testing.T, seq uint64, org, ns, op, key string, val []byte, prev uint64,
		afterOrg, afterNs string, afterSeq uint64, nAfter uint8, proposer byte) {
		p := proposal{frame: Frame{OrgID: org, Namespace: ns, Seq: seq, Op: op, Key: key, Value: val}, prev: prev}
		if len(p.frame.Value) == 0 {
			p.frame.Value = nil
		}
		var after []nsRef // in increasing order, as a canonical list must be
		for i := range int(nAfter % 8) {
			after = append(after, nsRef{afterOrg, fmt.Sprintf("%s%d", afterNs, i), afterSeq + uint64(i)})
		}
		p.after = refs(after...)
		p.proposer[0], p.proposer[nodeIDLen-1] = proposer, ^proposer
		for _, rec := range []record{blockRecord(p), {typ: recCertificate, prop: p}} {
			recs, err := decodeMessage(encodeMessage([]record{rec}), 0, nil)
			if seq == 0 || seq <= prev || !p.frame.validUTF8() {
				require.ErrorIs(t, err, ErrMalformed)
				require.Empty(t, recs)
				continue
			}
			require.NoError(t, err)
			require.Len(t, recs, 1)
			got := firstProposal(&recs[0])
			require.Equal(t, appendSlot(nil, &p.frame, p.prev), got.raw, "the bytes the frame ID hashes")
			require.Equal(t, frameID(&p), proposalID(&got))
			got.raw = nil
			require.Equal(t, p, got)
		}
	})
}

// receiveOnce starts a replicator for ids[0] of validators ids on a fresh
// hub (cfg adds to its config), hands it msg as a transport would, from
// validator sender modulo len(ids) (negative: a sender the transport
// cannot tell), and applies what it queued. It returns the replicator
// (closed when the test ends), the sender's index as given to the driver,
// the frames applied, and receive's error.
func receiveOnce(t *testing.T, ids []string, cfg QuasarConfig, sender int8, msg []byte) (r *QuasarReplicator, from int, applied []Frame, err error) {
	hub := NewMemoryHub()
	t.Cleanup(func() { hub.Close() })
	cfg.NodeID, cfg.Validators, cfg.Transport = ids[0], ids, hub.Connect(ids[0])
	for _, id := range ids[1:] {
		hub.Connect(id)
	}
	r, err = NewQuasar(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	var mu sync.Mutex
	r.Subscribe(func(_ context.Context, f Frame) error {
		mu.Lock()
		defer mu.Unlock()
		f.Value = bytes.Clone(f.Value)
		applied = append(applied, f)
		return nil
	})
	from = -1
	if sender >= 0 {
		from = int(sender) % len(ids)
	}
	err = r.receive(from, msg)
	r.applyAll()
	mu.Lock()
	defer mu.Unlock()
	return r, from, slices.Clone(applied), err
}

// FuzzQuasarReceive feeds arbitrary messages to a fresh QuasarReplicator
// (one or three validators) as if a peer had sent them. The driver must
// never panic, count garbage as malformed and leave no trace of it, never
// report a conflict, and never accept or apply a frame unless the message
// itself carries commit votes of a quorum for it: q-1 validators besides
// this node (votes from other voters than the authenticated sender do not
// count), as votes or as certificate voters.
func FuzzQuasarReceive(f *testing.F) {
	for _, seed := range quasarReceiveSeeds() {
		f.Add(seed.three, seed.sender, seed.msg)
	}
	f.Fuzz(func(t *testing.T, three bool, sender int8, msg []byte) {
		ids := []string{"node-0"}
		if three {
			ids = append(ids, "node-1", "node-2")
		}
		r, from, applied, recvErr := receiveOnce(t, ids, QuasarConfig{}, sender, msg)
		m := r.Metrics()
		require.Zero(t, m.Conflicts, "conflicts")

		recs, decErr := decodeMessage(msg, DefaultMaxFrameBytes, nil)
		if decErr != nil {
			require.ErrorIs(t, recvErr, ErrMalformed)
			require.EqualValues(t, 1, m.Malformed)
			require.Zero(t, m.FramesAccepted+m.FramesRejected+m.FramesApplied)
			require.Zero(t, m.Pending)
			require.Zero(t, m.VotesReceived)
			require.Empty(t, applied)
			return
		}
		require.NoError(t, recvErr)
		require.Zero(t, m.Malformed)

		// Quorum evidence carried by the message, per block.
		q := len(ids)/2 + 1
		byNID := map[nodeID]int{}
		for i, id := range ids {
			byNID[validatorNodeID(id)] = i
		}
		// A vote is evidence for its block only; a block names the frame's
		// position.
		evidence := map[[idLen]byte]uint64{}
		framed := map[[idLen]byte]Frame{}         // frames the message carries
		blocks := map[[idLen]byte][][idLen]byte{} // the blocks it carries, and their frames
		var votes []vote
		prepareRecords(recs, nil)
		for i := range recs {
			rec := &recs[i]
			switch rec.typ {
			case recVote:
				v, ok := byNID[rec.vote.voter]
				if ok && (from < 0 || from == v) {
					votes = append(votes, rec.vote)
				}
			case recBlock:
				for k, p := range rec.blk.slots() {
					framed[rec.ids[k]] = p.frame
				}
				blocks[rec.id] = rec.ids
				for _, fid := range rec.ids {
					blocks[singleBlockID(&fid)] = [][idLen]byte{fid}
				}
			case recCertificate:
				framed[rec.id] = rec.prop.frame
				blocks[singleBlockID(&rec.id)] = [][idLen]byte{rec.id}
				for k := range rec.voters.len() {
					if v, ok := byNID[rec.voters.at(k)]; ok {
						evidence[rec.id] |= 1 << v
					}
				}
			}
		}
		for _, v := range votes {
			for k, fid := range blocks[v.block] {
				if v.count == len(blocks[v.block]) && v.at(k) == voteCommit {
					evidence[fid] |= 1 << byNID[v.voter]
				}
			}
		}
		supported := 0
		for id := range framed {
			if bits.OnesCount64(evidence[id]&^1) >= q-1 {
				supported++
			}
		}
		require.LessOrEqual(t, m.FramesAccepted, uint64(supported), "frames accepted without a quorum of commit votes in the message")
		for _, f := range applied {
			ok := false
			for id, g := range framed {
				ok = ok || (sameFrame(&f, &g) && bits.OnesCount64(evidence[id]&^1) >= q-1)
			}
			require.True(t, ok, "applied %+v without a quorum of commit votes for a block of it", f)
		}
	})
}

type quasarReceiveSeed struct {
	name   string
	three  bool
	sender int8
	msg    []byte
}

// quasarReceiveSeeds are the seeds of FuzzQuasarReceive: valid traffic of
// each kind (so the fuzzer starts from messages the driver acts on), and the
// malformed messages.
func quasarReceiveSeeds() []quasarReceiveSeed {
	n0, n1, n2 := validatorNodeID("node-0"), validatorNodeID("node-1"), validatorNodeID("node-2")
	f := Frame{OrgID: "org", Namespace: "ns", Seq: 1, Op: "put", Key: "k", Value: []byte("v")}
	p := proposal{frame: f, proposer: n1}
	id := singleID(&p)
	g := f
	g.Value = []byte("w")
	pg := proposal{frame: g, proposer: n2}
	gid := singleID(&pg)
	f2 := f
	f2.Seq = 2
	p2 := proposal{frame: f2, prev: 1, after: refs(nsRef{"org", "elsewhere", 4}), proposer: n1}
	vote1 := func(block [idLen]byte, voter nodeID, typ byte) record {
		return record{typ: recVote, vote: oneVote(block, voter, typ)}
	}
	q1, q2 := p, p
	q1.frame.Namespace, q2.frame.Namespace = "ns1", "ns2"
	blk3 := blockRecord(p, q1, q2)
	id3 := blockIDOf([][idLen]byte{frameID(&p), frameID(&q1), frameID(&q2)})
	vote3 := func(voter nodeID, bits byte) record {
		return record{typ: recVote, vote: vote{block: id3, voter: voter, count: 3, bits: []byte{bits}}}
	}
	seeds := []quasarReceiveSeed{
		{"proposal", true, 1, encodeMessage([]record{blockRecord(p)})},
		{"proposal and vote", true, 1, encodeMessage([]record{blockRecord(p), vote1(id, n1, voteCommit)})},
		{"proposal and votes of two", true, -1, encodeMessage([]record{blockRecord(p), vote1(id, n1, voteCommit), vote1(id, n2, voteCommit)})},
		{"vote from another sender", true, 2, encodeMessage([]record{blockRecord(p), vote1(id, n1, voteCommit)})},
		{"competing proposals", true, -1, encodeMessage([]record{blockRecord(p), blockRecord(pg), vote1(gid, n2, voteCommit), vote1(id, n1, voteCancel)})},
		{"certificate", true, 1, encodeMessage([]record{{typ: recCertificate, prop: p, voters: nodes(n1, n2)}})},
		{"certificate chain", true, 1, encodeMessage([]record{{typ: recCertificate, prop: p, voters: nodes(n1, n2)}, {typ: recCertificate, prop: p2, voters: nodes(n0, n1)}})},
		{"certificate too few voters", true, 1, encodeMessage([]record{{typ: recCertificate, prop: p, voters: nodes(n1)}})},
		{"votes for an unknown block", true, -1, encodeMessage([]record{vote1(gid, n1, voteCommit), vote1(gid, n2, voteCancel)})},
		{"fetch", true, 2, encodeMessage([]record{{typ: recFetch, block: id, who: n2, to: n0}})},
		{"sync", true, 2, encodeMessage([]record{{typ: recSync, ref: nsRef{"org", "ns", 0}, who: n2, to: n0}})},
		{"behind", true, 1, encodeMessage([]record{{typ: recBehind, ref: nsRef{"org", "ns", 0}, who: n0, to: n1}})},
		{"digest", true, 2, encodeMessage([]record{{typ: recDigest, digest: refs(nsRef{"org", "ns", 5})}})},
		{"read", true, 1, encodeMessage([]record{{typ: recRead, ref: nsRef{"org", "ns", 0}, nonce: 3, who: n1}})},
		{"read ack", true, 2, encodeMessage([]record{{typ: recReadAck, ref: nsRef{"org", "ns", 0}, nonce: 1, who: n0, to: n2,
			head: 1, voted: votedRef{ok: true, id: id, seq: 2, prev: 1}}})},
		{"single node proposal", false, -1, encodeMessage([]record{blockRecord(p)})},
		{"block of three and votes", true, 1, encodeMessage([]record{blk3, vote3(n1, voteCommit|voteCommit<<2|voteCommit<<4), vote3(n2, voteCancel|voteCommit<<2)})},
	}
	for _, tc := range wireMalformed() {
		seeds = append(seeds, quasarReceiveSeed{"malformed " + tc.name, true, 1, tc.msg})
	}
	return seeds
}

// TestWire_WriteFuzzCorpus regenerates the committed seed corpora under
// testdata/fuzz (the same seeds as the f.Add calls, as files, so that they
// are visible and survive a change to the code that builds them). It runs
// only with REPLICATION_WRITE_FUZZ_CORPUS=1. The targets it writes hold its
// seeds alone: after a change of the wire format, stale ones go.
func TestWire_WriteFuzzCorpus(t *testing.T) {
	if os.Getenv("REPLICATION_WRITE_FUZZ_CORPUS") == "" {
		t.Skip("set REPLICATION_WRITE_FUZZ_CORPUS=1 to regenerate testdata/fuzz seeds")
	}
	targets := []string{"FuzzDecodeMessage", "FuzzQuasarReceive", "FuzzDecodeBlock", "FuzzDecodeVote"}
	for _, target := range targets {
		require.NoError(t, os.RemoveAll(filepath.Join("testdata", "fuzz", target)))
	}
	write := func(target, name string, lines ...string) {
		dir := filepath.Join("testdata", "fuzz", target)
		require.NoError(t, os.MkdirAll(dir, 0o755))
		body := "go test fuzz v1\n" + strings.Join(lines, "\n") + "\n"
		require.NoError(t, os.WriteFile(filepath.Join(dir, corpusName(name)), []byte(body), 0o644))
	}
	bytesLine := func(b []byte) string { return fmt.Sprintf("[]byte(%q)", b) }
	for _, s := range wireSamples() {
		write("FuzzDecodeMessage", "valid "+s.name, bytesLine(encodeMessage([]record{s.rec})))
		switch s.rec.typ {
		case recBlock:
			write("FuzzDecodeBlock", "valid "+s.name, bytesLine(appendBlockBody(nil, &s.rec.blk)))
		case recVote:
			v := s.rec.vote
			write("FuzzDecodeVote", "valid "+s.name, bytesLine(appendVoteRecord(nil, &v.block, &v.voter, v.count, v.bits)[6:]))
		}
	}
	for _, tc := range wireMalformed() {
		write("FuzzDecodeMessage", tc.name, bytesLine(tc.msg))
		// The body of a message's first record (after newMessage's 5-byte
		// header), when it is a block or a vote: a seed of its decoder.
		if len(tc.msg) > 7 && (tc.msg[5] == recBlock || tc.msg[5] == recVote) {
			target := map[byte]string{recBlock: "FuzzDecodeBlock", recVote: "FuzzDecodeVote"}[tc.msg[5]]
			d := decoder{b: tc.msg[6:]}
			if body := d.take(d.uvarint("length"), "body"); d.err == nil {
				write(target, tc.name, bytesLine(body))
			}
		}
	}
	for _, s := range quasarReceiveSeeds() {
		write("FuzzQuasarReceive", s.name, fmt.Sprintf("bool(%t)", s.three), fmt.Sprintf("int8(%d)", s.sender), bytesLine(s.msg))
	}
}

func corpusName(name string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, strings.ToLower(name))
}

// TestWire_DecodeDoesNotAllocateByClaim checks that huge counts and lengths
// are refused before anything is allocated for them.
func TestWire_DecodeDoesNotAllocateByClaim(t *testing.T) {
	for _, tc := range wireMalformed() {
		allocs := testing.AllocsPerRun(20, func() {
			_, _ = decodeMessage(tc.msg, 0, make([]record, 0, 4))
		})
		// One error value (and its formatted text), one record buffer.
		require.LessOrEqual(t, allocs, float64(8), "%s: %v allocations", tc.name, allocs)
	}
}

// amplifiers returns well-formed messages of about size bytes made of the
// smallest records there are, each claiming as much work as its bytes
// allow: empty digests, one long digest, and one proposal whose after list
// names the same frame over and over.
func amplifiers(size int) map[string][]byte {
	out := make(map[string][]byte)
	msg := newMessage(nil)
	n := 0
	for len(msg) < size {
		msg = append(msg, recDigest, 1, 0)
		n++
	}
	out["empty digests"] = encodeCount(msg, n)

	var heads []nsRef
	for range size / 3 {
		heads = append(heads, nsRef{seq: 1})
	}
	out["one long digest"] = encodeMessage([]record{{typ: recDigest, digest: refs(heads...)}})

	// A canonical after list names each namespace once: distinct names,
	// in increasing order (3 bytes each, and a 1-byte Seq: 5-byte entries).
	var after []nsRef
	for i := range size / 5 {
		after = append(after, nsRef{ns: string([]byte{byte(i >> 16), byte(i >> 8), byte(i)}), seq: 1})
	}
	p := proposal{frame: Frame{OrgID: "org", Namespace: "other", Seq: 1}, after: refs(after...), proposer: validatorNodeID("node-1")}
	out["long after list"] = encodeMessage([]record{blockRecord(p)})
	return out
}

// encodeCount finishes a message whose record count needs more than the
// four bytes newMessage reserves room for.
func encodeCount(msg []byte, n int) []byte {
	b := []byte{wireVersion}
	b = binary.AppendUvarint(b, uint64(n))
	return append(b, msg[5:]...)
}

// TestWire_DecodeDoesNotAmplify: decoding a message allocates nothing,
// however many records or list entries it holds (the driver decodes
// recordChunk records at a time into a reused buffer).
func TestWire_DecodeDoesNotAmplify(t *testing.T) {
	for name, msg := range amplifiers(1 << 20) {
		require.NoError(t, checkMessage(msg, 0), name)
		recs := make([]record, 0, recordChunk)
		allocs := testing.AllocsPerRun(5, func() {
			m, err := readMessage(msg, 0)
			for err == nil && m.more() {
				recs, err = m.read(recs[:0], recordChunk)
			}
			require.NoError(t, err)
		})
		require.Zero(t, allocs, name)
	}
}

// TestQuasar_ReceiveDoesNotAmplify: a validator handed a message of the
// smallest records there are allocates less than the message's own size
// to act on it; a proposal it takes in costs it one copy of the proposal,
// however many namespaces its after list names (it makes no state for the
// namespaces it does not know); and a message it refuses costs nothing
// like its size.
func TestQuasar_ReceiveDoesNotAmplify(t *testing.T) {
	const size = 1 << 20
	ids := []string{"node-0", "node-1", "node-2"}
	hub := NewMemoryHub()
	defer hub.Close()
	r, err := NewQuasar(context.Background(), QuasarConfig{NodeID: ids[0], Validators: ids, Transport: hub.Connect(ids[0])})
	require.NoError(t, err)
	defer r.Close()
	for name, msg := range amplifiers(size) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		require.NoError(t, r.receive(1, msg), name)
		runtime.ReadMemStats(&after)
		grew := after.TotalAlloc - before.TotalAlloc
		t.Logf("%s: %d-byte message, %d bytes allocated", name, len(msg), grew)
		limit := uint64(len(msg))
		if name == "long after list" {
			limit += 64 << 10 // the proposal is held: one copy of it, its entry, and what the background goroutines allocate meanwhile
		}
		require.Less(t, grew, limit, name)
	}
	require.Equal(t, 1, r.Metrics().Namespaces, "namespaces made: the proposal's own; none for its after list or the digests")

	// An after list naming one namespace over and over is not canonical:
	// refused whole.
	var after []nsRef
	for range size / 3 {
		after = append(after, nsRef{org: "org", ns: "ns", seq: 1})
	}
	p := proposal{frame: Frame{OrgID: "org", Namespace: "other", Seq: 1}, after: refs(after...), proposer: validatorNodeID("node-1")}
	msg := encodeMessage([]record{blockRecord(p)})
	var before, after2 runtime.MemStats
	runtime.ReadMemStats(&before)
	require.ErrorIs(t, r.receive(1, msg), ErrMalformed)
	runtime.ReadMemStats(&after2)
	require.Less(t, after2.TotalAlloc-before.TotalAlloc, uint64(len(msg))/64, "refusing a message")
}

// FuzzDecodeBlock: a block record's body decodes only if it is canonical:
// what decodes re-encodes to the very same bytes, and its frames' IDs are
// those of the frames re-encoded on their own.
func FuzzDecodeBlock(f *testing.F) {
	for _, s := range wireSamples() {
		if s.rec.typ == recBlock {
			f.Add(appendBlockBody(nil, &s.rec.blk))
		}
	}
	for _, tc := range wireMalformed() {
		f.Add(tc.msg)
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		d := decoder{b: body}
		var br blockRec
		d.block(&br, 0)
		d.done("block")
		if d.err != nil {
			require.ErrorIs(t, d.err, ErrMalformed)
			return
		}
		require.Equal(t, body, appendBlockBody(nil, &br), "a block that decodes is canonical")
		recs := []record{{typ: recBlock, blk: br}}
		prepareRecords(recs, nil)
		require.Len(t, recs[0].ids, br.count)
		var ps []proposal
		for i, p := range br.slots() {
			ps = append(ps, *p)
			require.Equal(t, frameID(p), recs[0].ids[i])
		}
		require.Len(t, ps, br.count)
		again := blockRecord(ps...)
		require.Equal(t, body, appendBlockBody(nil, &again.blk))
		require.Equal(t, blockIDOf(recs[0].ids), recs[0].id)
	})
}

// FuzzDecodeVote: a vote record's body decodes only with a frame count in
// range and zero padding, and re-encodes to the same bytes (its signature
// aside).
func FuzzDecodeVote(f *testing.F) {
	for _, s := range wireSamples() {
		if s.rec.typ == recVote {
			v := s.rec.vote
			f.Add(appendVoteRecord(nil, &v.block, &v.voter, v.count, v.bits)[6:])
		}
	}
	f.Add(make([]byte, idLen+nodeIDLen+2))
	f.Fuzz(func(t *testing.T, body []byte) {
		d := decoder{b: body}
		var v vote
		d.vote(&v)
		if d.err != nil {
			require.ErrorIs(t, d.err, ErrMalformed)
			return
		}
		require.GreaterOrEqual(t, v.count, 1)
		require.LessOrEqual(t, v.count, maxBlockFrames)
		re := appendVoteRecord(nil, &v.block, &v.voter, v.count, v.bits)[6:]
		require.Equal(t, body[:len(body)-len(v.sig)], re)
		for i := range v.count {
			require.LessOrEqual(t, v.at(i), byte(3))
		}
	})
}
