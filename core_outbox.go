package replication

// This file holds the outbox: the messages the core wants sent, to every
// validator or to one, and the helpers that append records to them.
//
// Records are appended to an open message per destination, so that under
// load one transport message carries many records; a message is cut once
// it holds maxBatchBytes. Without unicast (the transport is not a
// Unicaster), every record goes into the message to every validator; the
// records that ask for an answer name the validator asked, so the others
// ignore them. The outbox holds at most maxOutboxBytes: beyond, records
// are dropped and counted (Metrics().OutboxDropped), as if the network had
// lost them, and repair sends them again.

// outMsg is a message to send: to every validator (to < 0) or to
// validator to.
type outMsg struct {
	to int
	b  []byte
}

type outbox struct {
	off     bool // a single validator: nothing is sent
	unicast bool
	// bufs[0] is the open message to every validator, bufs[i+1] the one
	// to validator i; counts[k] is its number of records (0: not open).
	bufs   [][]byte
	counts []int
	order  []int    // open destinations, oldest first
	full   []outMsg // cut messages, oldest first
	bytes  int      // held in bufs and full
	limit  int      // maxOutboxBytes (tests lower it)
	spare  [][]byte // sent messages' buffers, for reuse
	mark   int      // length of the open message before the record being written
	// atts: the attestations written to each open message (by slot), so
	// that the certificates of a message carry each one once.
	atts [][][hashLen]byte
	m    *metrics
}

func (o *outbox) init(n int, unicast bool, m *metrics) {
	o.off = n == 1
	o.unicast = unicast
	o.m = m
	o.limit = maxOutboxBytes
	slots := 1
	if unicast {
		slots += n
	}
	o.bufs = make([][]byte, slots)
	o.counts = make([]int, slots)
	o.atts = make([][][hashLen]byte, slots)
}

// begin starts a record to validator to (-1: every validator) and returns
// the slot of the message to append it to, or false if the record is not
// to be sent (a single validator, or the outbox is full). Append the
// record to o.bufs[slot] and call end.
func (o *outbox) begin(to int) (slot int, ok bool) {
	if o.off {
		return 0, false
	}
	if o.bytes >= o.limit {
		o.m.outboxDropped.Add(1)
		return 0, false
	}
	if to >= 0 && o.unicast {
		slot = to + 1
	}
	if o.counts[slot] == 0 {
		var b []byte
		if k := len(o.spare); k > 0 {
			b, o.spare = o.spare[k-1], o.spare[:k-1]
		}
		o.bufs[slot] = newMessage(b)
		o.atts[slot] = o.atts[slot][:0]
		o.bytes += len(o.bufs[slot])
		o.order = append(o.order, slot)
	}
	o.mark = len(o.bufs[slot])
	return slot, true
}

// end finishes the record begun with begin.
func (o *outbox) end(slot int) { o.endN(slot, 1) }

// endN finishes the k records written since begin.
func (o *outbox) endN(slot, k int) {
	o.bytes += len(o.bufs[slot]) - o.mark
	o.counts[slot] += k
	if len(o.bufs[slot]) >= maxBatchBytes {
		o.full = append(o.full, o.cut(slot))
	}
}

// cut finishes the open message of slot and closes it.
func (o *outbox) cut(slot int) outMsg {
	msg := outMsg{to: slot - 1, b: finishMessage(o.bufs[slot], o.counts[slot])}
	o.bufs[slot], o.counts[slot] = nil, 0
	for i, s := range o.order {
		if s == slot {
			o.order = append(o.order[:i], o.order[i+1:]...)
			break
		}
	}
	return msg
}

// pending reports whether a message waits to be sent.
func (o *outbox) pending() bool { return len(o.full) > 0 || len(o.order) > 0 }

// pop returns the next message to send, oldest first.
func (o *outbox) pop() (outMsg, bool) {
	var msg outMsg
	switch {
	case len(o.full) > 0:
		msg = o.full[0]
		o.full[0] = outMsg{}
		o.full = o.full[1:]
	case len(o.order) > 0:
		msg = o.cut(o.order[0])
	default:
		return msg, false
	}
	o.bytes -= len(msg.b)
	return msg, true
}

// discard drops every message waiting (the node cannot send any more).
func (o *outbox) discard() {
	for {
		msg, ok := o.pop()
		if !ok {
			return
		}
		o.recycle(msg.b)
	}
}

// recycle takes back the buffer of a sent message (the transport copied
// it before its send call returned).
func (o *outbox) recycle(b []byte) {
	if cap(b) <= 2*maxBatchBytes && len(o.spare) < 4 {
		o.spare = append(o.spare, b[:0])
	}
}

// sendBlock sends block b, which this node holds whole.
func (c *core) sendBlock(b *block, to int) {
	if slot, ok := c.out.begin(to); ok {
		c.out.bufs[slot] = appendBlockRecord(c.out.bufs[slot], b.frames)
		c.out.end(slot)
	}
}

// sendVoteRecord sends this validator's votes bits on the count frames of
// block id.
func (c *core) sendVoteRecord(id *[idLen]byte, count int, bits []byte, to int) {
	if slot, ok := c.out.begin(to); ok {
		c.out.bufs[slot] = appendVoteRecord(c.out.bufs[slot], id, &c.cfg.ids[c.cfg.self], count, bits)
		c.out.end(slot)
	}
}

// sendCertificate sends accepted e with the validators whose commit votes
// this node counted for it. In a cluster with signing keys it sends those
// it holds parts for, with the parts, once it holds q of them; until then
// it asks for them and sends nothing (the peer asks again).
func (c *core) sendCertificate(now int64, e *entry, to int) {
	var parts []votePart
	if c.atts != nil {
		if parts = c.parts(e); len(parts) < c.cfg.q {
			c.askParts(now, e)
			return
		}
	}
	slot, ok := c.out.begin(to)
	if !ok {
		return
	}
	voters := make(nodeList, 0, int(e.nCommit)*nodeIDLen)
	k := 1
	if parts != nil {
		for i := range parts {
			voters = append(voters, c.cfg.ids[parts[i].voter][:]...)
			if c.out.writeAttestation(slot, parts[i].att) {
				k++
			}
		}
	} else {
		for i := range c.cfg.n() {
			if e.commits.has(i) {
				voters = append(voters, c.cfg.ids[i][:]...)
			}
		}
	}
	c.out.bufs[slot] = appendCertificateRecord(c.out.bufs[slot], &e.p, voters, parts)
	c.out.endN(slot, k)
}

// writeAttestation writes attestation a to the open message of slot,
// unless it holds it already, and reports whether it wrote it.
func (o *outbox) writeAttestation(slot int, a *attestation) bool {
	for _, h := range o.atts[slot] {
		if h == a.hash {
			return false
		}
	}
	o.atts[slot] = append(o.atts[slot], a.hash)
	o.bufs[slot] = appendAttestationRecord(o.bufs[slot], a)
	return true
}

// sendPart sends this validator's part on frame id, leaf of signed batch
// b, with its attestation, to validator to.
func (c *core) sendPart(id *[idLen]byte, b *attBatch, leaf uint32, to int) {
	slot, ok := c.out.begin(to)
	if !ok {
		return
	}
	p := c.partOf(b, leaf)
	k := 1
	if c.out.writeAttestation(slot, p.att) {
		k++
	}
	c.out.bufs[slot] = appendPartRecord(c.out.bufs[slot], id, &c.cfg.ids[c.cfg.self], &p)
	c.out.endN(slot, k)
}

// sendFetch asks validator to for block id on behalf of this node.
func (c *core) sendFetch(id *[idLen]byte, to int) { c.sendAsk(recFetch, id, to) }

// sendAsk sends validator to a request of this node about block or frame
// id: a fetch, or a part request (recPartRequest, attest.go).
func (c *core) sendAsk(typ byte, id *[idLen]byte, to int) {
	if to < 0 {
		return
	}
	if slot, ok := c.out.begin(to); ok {
		c.out.bufs[slot] = appendFetchRecord(c.out.bufs[slot], typ, id, &c.cfg.ids[c.cfg.self], &c.cfg.ids[to])
		c.out.end(slot)
	}
}

// sendSync sends, to validator to, a sync record (validator who asks
// validator asked for the frames of key after from) or a behind record
// (validator asked tells who that it no longer retains them).
func (c *core) sendSync(typ byte, key spaceKey, from uint64, who, asked, to int) {
	if to < 0 {
		return
	}
	if slot, ok := c.out.begin(to); ok {
		c.out.bufs[slot] = appendSyncRecord(c.out.bufs[slot], typ, key.org, key.ns, from, &c.cfg.ids[who], &c.cfg.ids[asked])
		c.out.end(slot)
	}
}

func (c *core) sendDigestRecord(heads []nsRef) {
	if slot, ok := c.out.begin(-1); ok {
		c.out.bufs[slot] = appendDigestRecord(c.out.bufs[slot], heads)
		c.out.end(slot)
	}
}
