package store

import (
	"context"
	"fmt"
	"time"
)

// Source states.
const (
	SourceStreaming    = "streaming"
	SourcePaused       = "paused"
	SourceDisconnected = "disconnected"
)

// SetSourceState records what the collector is doing with a source.
func (s *Store) SetSourceState(ctx context.Context, uuid, state, detail string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE sources SET state = ?, state_detail = ? WHERE uuid = ?`, state, detail, uuid)
	if err != nil {
		return fmt.Errorf("record state of source %s: %w", uuid, err)
	}
	return nil
}

// MarkDeleted records that retention removed a file (or is about to: the
// catalog says so first, and start-up finishes a removal a crash cut short).
func (s *Store) MarkDeleted(ctx context.Context, id int64) error {
	_, err := s.db.ExecContext(ctx, `UPDATE files SET state = ?, deleted_at = ? WHERE id = ?`, FileDeleted, time.Now().UnixNano(), id)
	if err != nil {
		return fmt.Errorf("catalog: mark file %d deleted: %w", id, err)
	}
	return nil
}

// SetFileContents replaces what the catalog says a file holds, after the
// file was read back (it changed behind the collector's back, or was
// adopted), and sets its state.
func (s *Store) SetFileContents(ctx context.Context, id int64, st FileState, size int64, packets, bytes uint64, first, last int64) error {
	_, err := s.db.ExecContext(ctx, `UPDATE files SET state = ?, size = ?, packets = ?, bytes = ?, first_ts = ?, last_ts = ?,
		closed_at = CASE WHEN closed_at = 0 THEN ? ELSE closed_at END WHERE id = ?`,
		st, size, packets, bytes, first, last, time.Now().UnixNano(), id)
	if err != nil {
		return fmt.Errorf("catalog: update file %d: %w", id, err)
	}
	return nil
}

// HasPath reports whether the catalog has an entry for path, in any state.
func (s *Store) HasPath(ctx context.Context, path string) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM files WHERE path = ?`, path).Scan(&n)
	return n > 0, err
}

// StorageUsed returns the bytes that open and closed files take.
func (s *Store) StorageUsed(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT COALESCE(SUM(size), 0) FROM files WHERE state IN (?, ?)`, FileOpen, FileClosed).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("catalog: storage used: %w", err)
	}
	return n, nil
}

// OldestClosed returns up to limit closed files, the first created first.
// Creation time is the collector's clock: packet timestamps come from the
// agent, and an agent stamping its packets in the future must not be able
// to make retention delete everyone else's files first.
func (s *Store) OldestClosed(ctx context.Context, limit int) ([]File, error) {
	return s.queryFiles(ctx, `SELECT `+fileColumns+` FROM files WHERE state = ? ORDER BY created_at, id LIMIT ?`, FileClosed, limit)
}

// ClosedBefore returns up to limit files closed before t, longest closed
// first.
func (s *Store) ClosedBefore(ctx context.Context, t time.Time, limit int) ([]File, error) {
	return s.queryFiles(ctx, `SELECT `+fileColumns+` FROM files WHERE state = ? AND closed_at > 0 AND closed_at < ? ORDER BY closed_at, id LIMIT ?`,
		FileClosed, t.UnixNano(), limit)
}
