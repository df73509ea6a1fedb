package server

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"

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
		fail(err)
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
