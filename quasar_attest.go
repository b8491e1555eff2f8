package replication

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"time"
)

// This file holds the driver's side of signed votes (attest.go): the
// signer goroutine, Proof and Evidence.

// startSigner starts signLoop, with a chain of a fresh random epoch, when
// the replicator has a SigningKey.
func (r *QuasarReplicator) startSigner() {
	if r.c.att == nil {
		return // no keys, or a single validator (it relays no votes)
	}
	var epoch [8]byte
	_, _ = rand.Read(epoch[:]) // crypto/rand never fails (it crashes the program instead)
	s := &signer{key: r.cfg.SigningKey, voter: r.c.cfg.ids[r.c.cfg.self], epoch: binary.BigEndian.Uint64(epoch[:])}
	r.signKick = make(chan struct{}, 1)
	r.partsCh = make(chan struct{})
	r.wg.Add(1)
	go r.signLoop(s)
}

// signLoop signs this validator's vote batches: each as soon as it is full,
// or attestWait after its first vote. It owns s. It takes mu only to take
// the batches and to install what it made of them; hashing and signing run
// without it.
func (r *QuasarReplicator) signLoop(s *signer) {
	defer r.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		r.mu.Lock()
		bs := r.c.takeBatches(mono(), false)
		at, open := r.c.nextCut()
		r.mu.Unlock()
		for _, b := range bs {
			hashes, att := s.sign(b)
			r.mu.Lock()
			r.c.attested(b, hashes, att)
			r.settleLocked(nil)
			r.unlock()
		}
		if len(bs) > 0 {
			continue // look again: more may be due
		}
		var due <-chan time.Time
		if open {
			timer.Reset(max(time.Duration(at-mono()), 0))
			due = timer.C
		}
		select {
		case <-r.closing:
			timer.Stop()
			return
		case <-r.signKick:
		case <-due:
		}
		timer.Stop()
	}
}

// absorbAttestLocked wakes the signer and the Proof calls when the core
// asks for it.
func (r *QuasarReplicator) absorbAttestLocked() {
	c := r.c
	if c.att == nil {
		return
	}
	if c.att.kick {
		c.att.kick = false
		signal(r.signKick)
	}
	if c.partsChanged {
		c.partsChanged = false
		close(r.partsCh)
		r.partsCh = make(chan struct{})
	}
}

// Proof returns a self-contained proof that the frame of orgID/namespace
// with Seq seq was accepted: the frame, and the signed attestations of the
// commit votes of a quorum of validators, each with the Merkle path of its
// vote. VerifyProof checks it offline, with the validators' public keys
// only.
//
// Proof needs signing keys (QuasarConfig.SigningKey). It works on any node
// that accepted the frame and still retains it (RetainFrames, RetainFor):
// it waits, bounded by ctx, until the votes are attested (a validator
// attests its votes within about 10 ms) and this node holds the parts of a
// quorum of voters, asking the voters for them. It fails with an error
// wrapping ErrNoProof if the frame is not accepted here or no longer
// retained, or there are no signing keys; with ctx's error (wrapped with
// ErrTimeout) if ctx ends first; with ErrClosed once the replicator is
// closed.
func (r *QuasarReplicator) Proof(ctx context.Context, orgID, namespace string, seq uint64) ([]byte, error) {
	if r.c.att == nil {
		return nil, fmt.Errorf("%w: no signing keys (QuasarConfig.SigningKey)", ErrNoProof)
	}
	var retry *time.Timer
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		if r.closed.Load() {
			return nil, ErrClosed
		}
		r.mu.Lock()
		e := r.c.acceptedAt(orgID, namespace, seq)
		if e == nil {
			r.mu.Unlock()
			return nil, fmt.Errorf("%w: %s/%s seq %d is not accepted on this node, or no longer retained", ErrNoProof, orgID, namespace, seq)
		}
		if parts := r.c.parts(e); len(parts) >= r.q {
			proof := appendProof(nil, &e.p, parts[:r.q])
			r.mu.Unlock()
			return proof, nil
		}
		r.c.askParts(mono(), e)
		r.settleLocked(nil)
		wake := r.partsCh
		r.unlock()
		if retry == nil {
			retry = time.NewTimer(r.cfg.WitnessAfter)
		} else {
			retry.Reset(r.cfg.WitnessAfter)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: proof of %s/%s seq %d: %w", ErrTimeout, orgID, namespace, seq, ctx.Err())
		case <-r.closing:
			return nil, ErrClosed
		case <-wake:
		case <-retry.C: // ask again: a request or its answer may have been lost
		}
	}
}

// Evidence returns the equivocation evidence this node found: pairs of
// valid attestations that one validator signed for one position of its
// chain (at most 64 are kept). An honest validator never signs two. Each
// is counted in Metrics().Equivocations.
func (r *QuasarReplicator) Evidence() []Evidence {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c.atts == nil {
		return nil
	}
	out := make([]Evidence, len(r.c.atts.evidence))
	for i, ev := range r.c.atts.evidence {
		out[i] = Evidence{Validator: ev.Validator, First: append([]byte(nil), ev.First...), Second: append([]byte(nil), ev.Second...)}
	}
	return out
}

// acceptedAt returns the accepted frame of org/ns with Seq seq, if held.
func (c *core) acceptedAt(org, ns string, seq uint64) *entry {
	s := c.spaces[spaceKey{org, ns}]
	if s == nil {
		return nil
	}
	// The accepted frames' positions and Seqs increase together: the frame
	// is the last one at a position below seq.
	i, _ := s.chain.find(seq)
	if i == s.chain.head {
		return nil
	}
	e := s.chain.slots[i-1].e
	if e == nil || e.p.frame.Seq != seq || !e.phase.accepted() {
		return nil
	}
	return e
}
