package replication

// This file holds the outbox: records queued for the next transport
// message, appended under QuasarReplicator.mu and sent by flushLocked.

// outbox: records are appended to the current message; a message is cut at
// maxBatchBytes, and cut messages wait in full. Nothing is sent with a
// single validator.
type outbox struct {
	buf, spare []byte
	count      int
	full       [][]byte
	flushing   bool
}

func (o *outbox) begin() {
	if o.count == 0 {
		o.buf = newMessage(o.buf)
	}
}

func (o *outbox) end() {
	o.count++
	if len(o.buf) >= maxBatchBytes {
		o.full = append(o.full, finishMessage(o.buf, o.count))
		o.buf, o.count = nil, 0
	}
}

func (st *state) sendProposal(p *proposal) {
	if st.r.n == 1 {
		return
	}
	st.out.begin()
	st.out.buf = appendProposalRecord(st.out.buf, p)
	st.out.end()
}

func (st *state) sendVote(e *entry) {
	if st.r.n == 1 {
		return
	}
	st.out.begin()
	st.out.buf = appendVoteRecord(st.out.buf, e.p.prev, &e.id, &st.r.ids[st.r.self], e.myVote)
	st.out.end()
}

func (st *state) sendCertificate(e *entry) {
	if st.r.n == 1 {
		return
	}
	voters := make(nodeList, 0, int(e.nCommit)*nodeIDLen)
	for i := 0; i < st.r.n; i++ {
		if e.commits.has(i) {
			voters = append(voters, st.r.ids[i][:]...)
		}
	}
	st.out.begin()
	st.out.buf = appendCertificateRecord(st.out.buf, &e.p, voters)
	st.out.end()
}

func (st *state) sendFetch(id *[idLen]byte) {
	if st.r.n == 1 {
		return
	}
	st.out.begin()
	st.out.buf = appendFetchRecord(st.out.buf, id)
	st.out.end()
}

func (st *state) sendSync(typ byte, key spaceKey, from uint64, who *nodeID) {
	if st.r.n == 1 {
		return
	}
	st.out.begin()
	st.out.buf = appendSyncRecord(st.out.buf, typ, key.org, key.ns, from, who)
	st.out.end()
}
