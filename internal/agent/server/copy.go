package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/mvm-dev/mvm/internal/agent/bulk"
	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/archive"
)

// copyBuffer is how much of a copy stream is gathered into one frame.
const copyBuffer = 256 << 10

// copyOut sends a tar stream of a guest path: Response (what is coming), data frames,
// then Done with the stream's length and digest.
func (s *Server) copyOut(ctx context.Context, pc *proto.Conn, req *proto.Copy) {
	info, err := archive.Stat(req.Path)
	if err != nil {
		_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: err.Error()})
		return
	}
	if req.Bulk && s.Bulk != nil && s.bulkMu.TryLock() {
		done := s.copyOutBulk(ctx, pc, req.Path, info)
		// The channel is free before the host hears the copy is over, so the copy it
		// may start at once finds it free.
		s.bulkMu.Unlock()
		if done != nil {
			_ = pc.WriteJSON(proto.TDone, done)
		}
		return
	}
	if err := pc.WriteJSON(proto.TResponse, proto.Response{OK: true, Source: &proto.CopySource{
		Base: info.Base, IsDir: info.IsDir, ContentsOnly: info.ContentsOnly}}); err != nil {
		return
	}
	bw := bufio.NewWriterSize(pc.DataWriter(proto.TStdout), copyBuffer)
	hw := archive.NewHashingWriter(bw)
	_, res, err := archive.Pack(ctx, hw, req.Path)
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	done := proto.Done{Bytes: hw.N(), Digest: hw.Sum(), Result: &proto.CopyResult{Bytes: res.Bytes, Entries: res.Entries, Skipped: res.Skipped}}
	if err != nil {
		done.Error = err.Error()
	}
	_ = pc.WriteJSON(proto.TDone, done)
}

// copyIn receives a tar stream and unpacks it at a guest path with docker cp's rules,
// then answers with what was written, or why not.
func (s *Server) copyIn(ctx context.Context, pc *proto.Conn, req *proto.Copy) {
	src := archive.SourceInfo{Base: req.Source.Base, IsDir: req.Source.IsDir, ContentsOnly: req.Source.ContentsOnly}
	if req.Bulk && bulk.ValidID(req.BulkID) && s.Bulk != nil && s.bulkMu.TryLock() {
		final := s.copyInBulk(ctx, pc, req, src)
		s.bulkMu.Unlock() // before the answer, as for a copy out
		if final != nil {
			_ = pc.WriteJSON(proto.TResponse, final)
		}
		return
	}
	if err := pc.WriteJSON(proto.TResponse, proto.Response{OK: true}); err != nil {
		return
	}
	pr, pw := io.Pipe()
	doneCh := make(chan proto.Done, 1)
	go func() {
		for {
			f, err := pc.Read()
			if err != nil {
				pw.CloseWithError(errors.New("the host stopped sending"))
				return
			}
			switch f.Type {
			case proto.TStdin:
				if _, err := pw.Write(f.Payload); err != nil {
					return // unpacking failed; the answer says why
				}
			case proto.TDone:
				var d proto.Done
				if err := proto.Decode(f, proto.TDone, &d); err != nil {
					pw.CloseWithError(err)
					return
				}
				doneCh <- d
				pw.Close()
				return
			default:
				pw.CloseWithError(errors.New("unexpected " + f.Type.String() + " frame in a copy"))
				return
			}
		}
	}()
	fail := func(err error) {
		pr.CloseWithError(err)
		_ = pc.WriteJSON(proto.TResponse, proto.Response{Error: err.Error()})
	}
	hr := archive.NewHashingReader(pr)
	res, err := archive.Unpack(ctx, hr, req.Path, src, archive.UnpackOptions{Chown: os.Geteuid() == 0})
	if err != nil {
		fail(senderFirst(doneCh, err))
		return
	}
	// The digest covers everything the sender wrote, so read to the end of the stream.
	if _, err := io.Copy(io.Discard, hr); err != nil {
		fail(err)
		return
	}
	d := <-doneCh
	if d.Error != "" {
		fail(errors.New("the sender failed: " + d.Error))
		return
	}
	if err := hr.Verify(d.Digest, d.Bytes); err != nil {
		fail(err)
		return
	}
	_ = pc.WriteJSON(proto.TResponse, proto.Response{OK: true, Result: &proto.CopyResult{Bytes: res.Bytes, Entries: res.Entries}})
}

// copyOutBulk sends the tar stream on the bulk channel (file contents with
// sendfile) and returns the Done to send on the request's own stream (nil when the
// host is gone).
func (s *Server) copyOutBulk(ctx context.Context, pc *proto.Conn, path string, info archive.SourceInfo) *proto.Done {
	g := bulk.NewGuard(s.Bulk)
	defer g.Release()
	// The host sends nothing more on the request's stream, so its end means the host
	// left: stop packing and sending into a channel nobody reads any more.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		for {
			if _, err := pc.Read(); err != nil {
				cancel()
				g.Abort()
				return
			}
		}
	}()
	id := bulk.NewID()
	if err := pc.WriteJSON(proto.TResponse, proto.Response{OK: true, BulkID: id, Source: &proto.CopySource{
		Base: info.Base, IsDir: info.IsDir, ContentsOnly: info.ContentsOnly}}); err != nil {
		return nil
	}
	done := proto.Done{}
	bw, err := bulk.NewWriter(s.Bulk, id)
	var res archive.Result
	if err == nil {
		_, res, err = archive.PackWith(ctx, bw, path, archive.PackOptions{Content: bw.SendFile})
		if ferr := bw.Flush(); err == nil {
			err = ferr
		}
		done.Bytes, done.Digest, done.Changed = bw.N(), bw.Sum(), bw.Changed()
	}
	done.Result = &proto.CopyResult{Bytes: res.Bytes, Entries: res.Entries, Skipped: res.Skipped}
	if err != nil {
		done.Error = err.Error()
	}
	return &done
}

// copyInBulk reads the tar stream from the bulk channel and returns the answer to
// give (nil when the host is gone). The request's stream carries Done, which ends the
// read when the sender failed (and bounds it otherwise), and its end (the host gone)
// aborts the read.
func (s *Server) copyInBulk(ctx context.Context, pc *proto.Conn, req *proto.Copy, src archive.SourceInfo) *proto.Response {
	g := bulk.NewGuard(s.Bulk)
	defer g.Release()
	if err := pc.WriteJSON(proto.TResponse, proto.Response{OK: true, BulkID: req.BulkID}); err != nil {
		return nil
	}
	type doneOrErr struct {
		d   proto.Done
		err error
	}
	doneCh := make(chan doneOrErr, 1) // always gets exactly one value
	go func() {
		var d proto.Done
		err := pc.Expect(proto.TDone, &d)
		doneCh <- doneOrErr{d, err} // before the abort, so the reader's failure finds it
		if err != nil {
			g.Abort() // the host is gone: stop reading
			return
		}
		g.Finish(d)
	}()
	fail := func(err error) *proto.Response { return &proto.Response{Error: err.Error()} }
	// failRead reports a failed read, or what made it fail: the sender's error.
	failRead := func(err error) *proto.Response {
		select {
		case r := <-doneCh:
			if r.err == nil && r.d.Error != "" {
				err = errors.New("the sender failed: " + r.d.Error)
			}
		default:
		}
		return fail(err)
	}
	br := bufio.NewReaderSize(g.Reader(s.Bulk), 256<<10)
	if err := bulk.SkipToMarker(br, req.BulkID); err != nil {
		return failRead(fmt.Errorf("bulk channel: %w", err))
	}
	hr := archive.NewHashingReader(br)
	res, err := archive.Unpack(ctx, hr, req.Path, src, archive.UnpackOptions{Chown: os.Geteuid() == 0})
	if err != nil {
		return failRead(err)
	}
	r := <-doneCh
	if r.err != nil {
		return fail(fmt.Errorf("the host stopped before the end of the copy: %w", r.err))
	}
	d := r.d
	if d.Error != "" {
		return fail(errors.New("the sender failed: " + d.Error))
	}
	if rest := d.Bytes - hr.N(); rest > 0 {
		if _, err := io.CopyN(io.Discard, hr, rest); err != nil {
			return fail(err)
		}
	}
	if err := bulk.Verify(hr, d); err != nil {
		return fail(err)
	}
	return &proto.Response{OK: true, Result: &proto.CopyResult{Bytes: res.Bytes, Entries: res.Entries}}
}

// senderFirst returns the sender's error when it failed (its Done says why the stream
// ended early), else err.
func senderFirst(doneCh <-chan proto.Done, err error) error {
	select {
	case d := <-doneCh:
		if d.Error != "" {
			return errors.New("the sender failed: " + d.Error)
		}
	default:
	}
	return err
}
