package client

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/mvm-dev/mvm/internal/agent/proto"
	"github.com/mvm-dev/mvm/internal/archive"
)

// CopyOut copies a guest path to a host destination with docker cp's rules. Files on
// the host belong to the caller; setuid and setgid bits are not restored.
func (cl *Client) CopyOut(ctx context.Context, guestPath, hostDest string) (archive.Result, error) {
	s, err := cl.open(ctx, proto.Request{Op: proto.OpCopyOut, Copy: &proto.Copy{Path: guestPath}})
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
	src := archive.SourceInfo{Base: resp.Source.Base, IsDir: resp.Source.IsDir, ContentsOnly: resp.Source.ContentsOnly}
	pr, pw := io.Pipe()
	doneCh := make(chan proto.Done, 1)
	go func() {
		for {
			f, err := s.pc.Read()
			if err != nil {
				pw.CloseWithError(fmt.Errorf("the agent stopped sending: %w", err))
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
					return
				}
				doneCh <- d
				pw.Close()
				return
			default:
				pw.CloseWithError(proto.Decode(f, proto.TDone, nil))
				return
			}
		}
	}()
	hr := archive.NewHashingReader(pr)
	res, err := archive.Unpack(ctx, hr, hostDest, src, archive.UnpackOptions{})
	if err != nil {
		pr.CloseWithError(err)
		return res, err
	}
	if _, err := io.Copy(io.Discard, hr); err != nil {
		return res, err
	}
	d := <-doneCh
	if d.Error != "" {
		return res, fmt.Errorf("the agent failed while reading %s: %s", guestPath, d.Error)
	}
	if d.Result != nil {
		res.Skipped = d.Result.Skipped
	}
	return res, hr.Verify(d.Digest, d.Bytes)
}

// CopyIn copies a host path into the guest with docker cp's rules; the guest keeps
// modes, times and (the agent runs as root) owners.
func (cl *Client) CopyIn(ctx context.Context, hostSrc, guestDest string) (archive.Result, error) {
	info, err := archive.Stat(hostSrc)
	if err != nil {
		return archive.Result{}, err
	}
	s, err := cl.open(ctx, proto.Request{Op: proto.OpCopyIn, Copy: &proto.Copy{Path: guestDest,
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
	sendCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	sent := make(chan error, 1)
	var packed archive.Result
	go func() {
		bw := bufio.NewWriterSize(s.pc.DataWriter(proto.TStdin), 256<<10)
		hw := archive.NewHashingWriter(bw)
		_, res, err := archive.Pack(sendCtx, hw, hostSrc)
		packed = res
		if ferr := bw.Flush(); err == nil {
			err = ferr
		}
		done := proto.Done{Bytes: hw.N(), Digest: hw.Sum()}
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
	sendErr := <-sent
	switch {
	case ferr != nil:
		if sendErr != nil && !errors.Is(sendErr, context.Canceled) {
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
