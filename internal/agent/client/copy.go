package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/mvm-dev/mvm/internal/agent/bulk"
	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/archive"
)

// CopyOut copies a guest path to a host destination with docker cp's rules. Files on
// the host belong to the caller; setuid and setgid bits are not restored.
func (cl *Client) CopyOut(ctx context.Context, guestPath, hostDest string) (archive.Result, error) {
	// Attach to the bulk channel first, so the agent can use it; when it is busy or
	// absent the stream comes in frames on the request's own connection.
	var bc net.Conn
	if cl.bulk != nil {
		if c, err := cl.bulk(ctx); err == nil {
			bc = c
			defer bc.Close()
		}
	}
	s, err := cl.open(ctx, proto.Request{Op: proto.OpCopyOut, Copy: &proto.Copy{Path: guestPath, Bulk: bc != nil}})
	if err != nil {
		return archive.Result{}, err
	}
	defer s.Close()
	var resp proto.Response
	if err := s.pc.Expect(proto.TResponse, &resp); err != nil {
		return archive.Result{}, cl.ctxErr(ctx, err)
	}
	if !resp.OK || resp.Source == nil {
		return archive.Result{}, fmt.Errorf("guest path %s: %s", guestPath, resp.Error)
	}
	// Where the data lands is decided here, from the path we asked for: only whether it
	// is a directory comes from the guest, which must not pick the name (".bashrc") or
	// have its data merged into the destination.
	src, err := archive.Describe(guestPath, resp.Source.IsDir)
	if err != nil {
		return archive.Result{}, err
	}
	if resp.Source.Base != src.Base || resp.Source.ContentsOnly != src.ContentsOnly {
		return archive.Result{}, fmt.Errorf("the agent described guest path %s as %q (contents only: %v), which is not what was asked for: copy refused",
			guestPath, resp.Source.Base, resp.Source.ContentsOnly)
	}
	var stream io.Reader
	doneCh := make(chan proto.Done, 1)
	errCh := make(chan error, 1)
	if resp.BulkID != "" && bc != nil {
		stop := context.AfterFunc(ctx, func() { bc.Close() })
		defer stop()
		g := bulk.NewGuard(bc)
		go func() { // Done comes on the request's stream
			var d proto.Done
			if err := s.pc.Expect(proto.TDone, &d); err != nil {
				errCh <- err
				bc.Close() // unblock the reader
				return
			}
			doneCh <- d // before Finish, so a read it fails finds the reason
			g.Finish(d) // a failed sender sends no more: stop reading
		}()
		br := bufio.NewReaderSize(g.Reader(bc), 256<<10)
		if err := bulk.SkipToMarker(br, resp.BulkID); err != nil {
			return archive.Result{}, cl.agentErr(ctx, doneCh, guestPath, fmt.Errorf("bulk channel: %w", err))
		}
		stream = br
	} else {
		if bc != nil {
			bc.Close()
		}
		pr, pw := io.Pipe()
		stream = pr
		go func() {
			for {
				f, err := s.pc.Read()
				if err != nil {
					pw.CloseWithError(fmt.Errorf("the agent stopped sending: %w", err))
					errCh <- err
					return
				}
				switch f.Type {
				case proto.TStdout:
					if _, err := pw.Write(f.Payload); err != nil {
						return
					}
				case proto.TDone:
					var d proto.Done
					if err := proto.Decode(f, proto.TDone, &d); err != nil {
						pw.CloseWithError(err)
						errCh <- err
						return
					}
					doneCh <- d
					pw.Close()
					return
				default:
					err := proto.Decode(f, proto.TDone, nil)
					pw.CloseWithError(err)
					errCh <- err
					return
				}
			}
		}()
	}
	hr := archive.NewHashingReader(stream)
	res, err := archive.Unpack(ctx, hr, hostDest, src, archive.UnpackOptions{})
	if err != nil {
		if c, ok := stream.(io.Closer); ok {
			c.Close()
		}
		return res, cl.agentErr(ctx, doneCh, guestPath, err)
	}
	// The digest covers the whole stream, so what Unpack left (the end blocks) is read
	// too: in frames up to the end of the pipe; on the bulk channel, which has no end,
	// up to the length Done gives.
	if resp.BulkID == "" || bc == nil {
		if _, err := io.Copy(io.Discard, hr); err != nil {
			return res, err
		}
	}
	var d proto.Done
	select {
	case d = <-doneCh:
	case err := <-errCh:
		return res, cl.ctxErr(ctx, fmt.Errorf("the agent did not finish the copy: %w", err))
	}
	if d.Error != "" {
		return res, agentFailed(guestPath, d)
	}
	if rest := d.Bytes - hr.N(); rest > 0 {
		if _, err := io.CopyN(io.Discard, hr, rest); err != nil {
			return res, fmt.Errorf("copy stream cut short: %w", err)
		}
	}
	if d.Result != nil {
		res.Skipped = d.Result.Skipped
	}
	return res, bulk.Verify(hr, d)
}

// agentErr returns why a copy-out stream ended early: the agent's own reason when its
// Done came with one, else err.
func (cl *Client) agentErr(ctx context.Context, doneCh <-chan proto.Done, guestPath string, err error) error {
	select {
	case d := <-doneCh:
		if d.Error != "" {
			return agentFailed(guestPath, d)
		}
	default:
	}
	return cl.ctxErr(ctx, err)
}

func agentFailed(guestPath string, d proto.Done) error {
	return fmt.Errorf("the agent failed while reading %s: %s", guestPath, d.Error)
}

// CopyIn copies a host path into the guest with docker cp's rules; the guest keeps
// modes, times and (the agent runs as root) owners.
func (cl *Client) CopyIn(ctx context.Context, hostSrc, guestDest string) (archive.Result, error) {
	info, err := archive.Stat(hostSrc)
	if err != nil {
		return archive.Result{}, err
	}
	var bulkConn bulk.Channel
	id := ""
	if cl.bulk != nil {
		if c, err := cl.bulk(ctx); err == nil {
			if ch, ok := c.(bulk.Channel); ok {
				bulkConn, id = ch, bulk.NewID()
				defer c.Close()
			} else {
				c.Close()
			}
		}
	}
	s, err := cl.open(ctx, proto.Request{Op: proto.OpCopyIn, Copy: &proto.Copy{Path: guestDest, Bulk: bulkConn != nil, BulkID: id,
		Source: &proto.CopySource{Base: info.Base, IsDir: info.IsDir, ContentsOnly: info.ContentsOnly}}})
	if err != nil {
		return archive.Result{}, err
	}
	defer s.Close()
	var resp proto.Response
	if err := s.pc.Expect(proto.TResponse, &resp); err != nil {
		return archive.Result{}, cl.ctxErr(ctx, err)
	}
	if !resp.OK {
		return archive.Result{}, fmt.Errorf("copy to %s: %s", guestDest, resp.Error)
	}
	useBulk := bulkConn != nil && resp.BulkID == id
	if bulkConn != nil && !useBulk {
		bulkConn.(io.Closer).Close() // declined: let another copy have it
	}
	sendCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	sent := make(chan error, 1)
	var packed archive.Result
	go func() {
		var done proto.Done
		var err error
		if useBulk {
			var w *bulk.Writer
			if w, err = bulk.NewWriter(bulkConn, id); err == nil {
				_, packed, err = archive.PackWith(sendCtx, w, hostSrc, archive.PackOptions{Content: w.SendFile})
				if ferr := w.Flush(); err == nil {
					err = ferr
				}
				done.Bytes, done.Digest, done.Changed = w.N(), w.Sum(), w.Changed()
			}
		} else {
			bw := bufio.NewWriterSize(s.pc.DataWriter(proto.TStdin), 256<<10)
			hw := archive.NewHashingWriter(bw)
			_, packed, err = archive.Pack(sendCtx, hw, hostSrc)
			if ferr := bw.Flush(); err == nil {
				err = ferr
			}
			done.Bytes, done.Digest = hw.N(), hw.Sum()
		}
		if err != nil {
			done.Error = err.Error()
		}
		if werr := s.pc.WriteJSON(proto.TDone, done); err == nil {
			err = werr
		}
		sent <- err
	}()
	// The agent answers once everything is written, or as soon as it gives up.
	var final proto.Response
	ferr := s.pc.Expect(proto.TResponse, &final)
	cancel()
	if ferr != nil || !final.OK {
		// Nobody reads what the sender still has for the agent: a full channel or
		// stream window would block it for ever.
		if bulkConn != nil {
			bulkConn.(io.Closer).Close()
		}
		s.Close()
	}
	sendErr := <-sent
	switch {
	case ferr != nil:
		if sendErr != nil && !errors.Is(sendErr, context.Canceled) && !errors.Is(sendErr, net.ErrClosed) {
			return packed, sendErr
		}
		return packed, cl.ctxErr(ctx, ferr)
	case !final.OK:
		return packed, fmt.Errorf("copy to %s: %s", guestDest, final.Error)
	}
	if final.Result != nil {
		packed.Bytes, packed.Entries = final.Result.Bytes, final.Result.Entries
	}
	return packed, nil
}
