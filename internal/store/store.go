// Package store is the collector's state: an embedded SQLite database
// (modernc.org/sqlite, no cgo) in the data directory holding, per source,
// the last batch durably stored, and the catalog of capture files. It is the
// only user of database/sql.
//
// Batch commits from many sources are grouped into one transaction by a
// single committer goroutine, so sources write their files concurrently and
// wait only for the shared commit.
package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	"modernc.org/sqlite" // also the database/sql driver "sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// FileState is the state of a capture file in the catalog.
type FileState string

// File states.
const (
	FileOpen    FileState = "open"    // being written
	FileClosed  FileState = "closed"  // complete, never written again
	FileMissing FileState = "missing" // gone from disk behind the collector's back
	FileDeleted FileState = "deleted" // removed by retention
)

// Source is a source's stored state.
type Source struct {
	UUID      string
	Name      string
	Hostname  string
	CaptureID string // capture run the seqs below belong to
	LastSeq   uint64 // highest batch stored whole
	// PartialSeq, when non-zero, is LastSeq+1 cut short by a crash: its
	// first PartialRecords records are in a file already.
	PartialSeq     uint64
	PartialRecords int
	Counters
	FirstSeen, LastSeen time.Time
	// State is what the collector is doing with the source: streaming,
	// paused (storage full, not acking), or disconnected.
	State, StateDetail string
	// EndedUncleanAt, when set, is when the source's last stream ended
	// without the agent's clean end (the agent was killed, crashed, or
	// lost its link) and no stream has resumed it since.
	EndedUncleanAt time.Time
	// Owner is the credential that created the source ("token:ID",
	// "user:NAME", "cert:SUBJECT", "insecure"); empty for a source made
	// before ownership was recorded, which the next credential claims.
	Owner string
}

// Counters are a source's running totals.
type Counters struct {
	Packets        uint64
	Bytes          uint64 // captured bytes stored
	Batches        uint64
	Duplicates     uint64 // batches received again and not stored twice
	KernelDrops    uint64
	InterfaceDrops uint64
	AgentDrops     uint64
}

// Add adds o to c.
func (c *Counters) Add(o Counters) {
	c.Packets += o.Packets
	c.Bytes += o.Bytes
	c.Batches += o.Batches
	c.Duplicates += o.Duplicates
	c.KernelDrops += o.KernelDrops
	c.InterfaceDrops += o.InterfaceDrops
	c.AgentDrops += o.AgentDrops
}

// File is a catalog entry.
type File struct {
	ID         int64
	SourceUUID string
	Path       string // relative to the data directory
	State      FileState
	LinkType   uint32
	Snaplen    int
	Size       int64 // bytes committed, header included
	Packets    uint64
	Bytes      uint64 // captured bytes
	FirstTS    int64  // ns; 0 while empty
	LastTS     int64
	CreatedAt  time.Time
	ClosedAt   time.Time
	DeletedAt  time.Time
	// Writer is the credential whose stream wrote the file (see
	// Source.Owner); empty for files written before it was recorded.
	Writer string
}

// Store is the state database.
type Store struct {
	db     *sql.DB
	commit chan *commitReq
	done   chan struct{}
	sync   bool
	// repairs says what Open found out of range and set right.
	repairs []string
}

// Repairs describes the values Open found out of range in the database
// (a sum that overflowed, a negative count) and set right, one line each.
func (s *Store) Repairs() []string { return s.repairs }

// numericColumns are the columns readers scan into Go integers; unsigned
// ones must also not be negative.
var numericColumns = []struct {
	table, key string
	cols       []string
	unsigned   bool
}{
	{"sources", "uuid", []string{"last_seq", "partial_seq", "partial_records", "packets", "bytes", "batches", "duplicates",
		"kernel_drops", "interface_drops", "agent_drops"}, true},
	{"sources", "uuid", []string{"first_seen", "last_seen", "ended_unclean_at"}, false},
	{"files", "id", []string{"link_type", "snaplen", "size", "packets", "bytes"}, true},
	{"files", "id", []string{"first_ts", "last_ts", "created_at", "closed_at", "deleted_at"}, false},
}

// repair sets right every value that a reader could not scan: a float
// (an integer sum that overflowed in an older version), text, NULL, or a
// negative count. Floats and out-of-range values become MaxCounter, others
// zero. It reports each change, so the collector never refuses to start
// over its own state.
func repair(db *sql.DB) ([]string, error) {
	var out []string
	for _, t := range numericColumns {
		for _, c := range t.cols {
			bad := fmt.Sprintf("typeof(%s) != 'integer'", c)
			if t.unsigned {
				bad += fmt.Sprintf(" OR %s < 0", c)
			}
			rows, err := db.Query(fmt.Sprintf(`SELECT %s, quote(%s) FROM %s WHERE %s`, t.key, c, t.table, bad))
			if err != nil {
				return nil, fmt.Errorf("check %s.%s: %w", t.table, c, err)
			}
			var found []string
			for rows.Next() {
				var key, val string
				if err := rows.Scan(&key, &val); err != nil {
					rows.Close()
					return nil, err
				}
				found = append(found, fmt.Sprintf("%s %s: %s was %s", t.table, key, c, val))
			}
			rows.Close()
			if len(found) == 0 {
				continue
			}
			fix := fmt.Sprintf(`UPDATE %[1]s SET %[2]s = CASE
				WHEN typeof(%[2]s) = 'real' AND %[2]s >= %[3]d THEN %[3]d
				WHEN typeof(%[2]s) = 'real' AND %[2]s > 0 THEN CAST(%[2]s AS INTEGER)
				ELSE 0 END WHERE %[4]s`, t.table, c, MaxCounter, bad)
			if _, err := db.Exec(fix); err != nil {
				return nil, fmt.Errorf("repair %s.%s: %w", t.table, c, err)
			}
			out = append(out, found...)
		}
	}
	return out, nil
}

// Options tune Open.
type Options struct {
	// Sync makes every commit durable against power loss
	// (synchronous=FULL); otherwise commits survive a process crash.
	Sync bool
}

// Open opens or creates the database at path and migrates it.
func Open(path string, o Options) (*Store, error) {
	sync := "NORMAL"
	if o.Sync {
		sync = "FULL"
	}
	// The database holds only hashes of secrets, but still: owner only.
	if f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600); err == nil {
		f.Close()
	}
	dsn := fmt.Sprintf("file:%s?_pragma=journal_mode(WAL)&_pragma=synchronous(%s)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(ON)&_txlock=immediate", path, sync)
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open state database %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	if err := migrate(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	repairs, err := repair(db)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("state database %s: %w", path, err)
	}
	s := &Store{db: db, commit: make(chan *commitReq, 256), done: make(chan struct{}), sync: o.Sync, repairs: repairs}
	go s.committer()
	return s, nil
}

// Close stops the committer and closes the database.
func (s *Store) Close() error {
	close(s.commit)
	<-s.done
	return s.db.Close()
}

var migrations = []string{
	`CREATE TABLE sources (
		uuid            TEXT PRIMARY KEY,
		name            TEXT NOT NULL,
		hostname        TEXT NOT NULL DEFAULT '',
		capture_id      TEXT NOT NULL DEFAULT '',
		last_seq        INTEGER NOT NULL DEFAULT 0,
		partial_seq     INTEGER NOT NULL DEFAULT 0,
		partial_records INTEGER NOT NULL DEFAULT 0,
		packets         INTEGER NOT NULL DEFAULT 0,
		bytes           INTEGER NOT NULL DEFAULT 0,
		batches         INTEGER NOT NULL DEFAULT 0,
		duplicates      INTEGER NOT NULL DEFAULT 0,
		kernel_drops    INTEGER NOT NULL DEFAULT 0,
		interface_drops INTEGER NOT NULL DEFAULT 0,
		agent_drops     INTEGER NOT NULL DEFAULT 0,
		first_seen      INTEGER NOT NULL,
		last_seen       INTEGER NOT NULL
	);
	CREATE TABLE files (
		id             INTEGER PRIMARY KEY,
		source_uuid    TEXT NOT NULL REFERENCES sources(uuid),
		path           TEXT NOT NULL UNIQUE,
		state          TEXT NOT NULL,
		link_type      INTEGER NOT NULL,
		snaplen        INTEGER NOT NULL,
		size           INTEGER NOT NULL,
		packets        INTEGER NOT NULL DEFAULT 0,
		bytes          INTEGER NOT NULL DEFAULT 0,
		first_ts       INTEGER NOT NULL DEFAULT 0,
		last_ts        INTEGER NOT NULL DEFAULT 0,
		created_at     INTEGER NOT NULL,
		closed_at      INTEGER NOT NULL DEFAULT 0
	);
	CREATE INDEX files_source_time ON files(source_uuid, first_ts);
	CREATE INDEX files_state ON files(state);`,
	`CREATE TABLE tokens (
		id          TEXT PRIMARY KEY,
		name        TEXT NOT NULL,
		role        TEXT NOT NULL,
		hash        TEXT NOT NULL,
		created_at  INTEGER NOT NULL,
		expires_at  INTEGER NOT NULL DEFAULT 0,
		revoked_at  INTEGER NOT NULL DEFAULT 0,
		last_used   INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE users (
		name        TEXT PRIMARY KEY,
		role        TEXT NOT NULL,
		hash        TEXT NOT NULL,
		created_at  INTEGER NOT NULL,
		disabled_at INTEGER NOT NULL DEFAULT 0
	);`,
	`ALTER TABLE files ADD COLUMN deleted_at INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE sources ADD COLUMN state TEXT NOT NULL DEFAULT '';
	ALTER TABLE sources ADD COLUMN state_detail TEXT NOT NULL DEFAULT '';
	CREATE INDEX files_state_first ON files(state, first_ts);
	CREATE INDEX files_state_closed ON files(state, closed_at);`,
	// Version 4: retention by creation time; capture gaps; ownership (the
	// credential that created each source, the one that wrote each file,
	// and the source name patterns a token may stream).
	`CREATE INDEX files_state_created ON files(state, created_at);
	ALTER TABLE sources ADD COLUMN ended_unclean_at INTEGER NOT NULL DEFAULT 0;
	CREATE TABLE gaps (
		id          INTEGER PRIMARY KEY,
		source_uuid TEXT NOT NULL REFERENCES sources(uuid),
		from_ts     INTEGER NOT NULL,
		to_ts       INTEGER NOT NULL,
		detected_at INTEGER NOT NULL,
		reason      TEXT NOT NULL
	);
	CREATE INDEX gaps_source ON gaps(source_uuid, from_ts);
	ALTER TABLE sources ADD COLUMN owner TEXT NOT NULL DEFAULT '';
	ALTER TABLE files ADD COLUMN writer TEXT NOT NULL DEFAULT '';
	ALTER TABLE tokens ADD COLUMN sources TEXT NOT NULL DEFAULT '';
	CREATE INDEX sources_owner ON sources(owner);
	CREATE INDEX sources_name ON sources(name);`,
}

func migrate(db *sql.DB) error {
	var version int
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&version); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this tapstream knows (%d); use a newer tapstream", version, len(migrations))
	}
	for i := version; i < len(migrations); i++ {
		tx, err := db.Begin()
		if err != nil {
			return err
		}
		if _, err := tx.Exec(migrations[i]); err != nil {
			tx.Rollback()
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
		if _, err := tx.Exec(fmt.Sprintf(`PRAGMA user_version = %d`, i+1)); err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	return nil
}

// ErrNotFound is returned for a source or file the database does not hold.
var ErrNotFound = errors.New("not found")

// GetSource returns the stored state of a source.
func (s *Store) GetSource(ctx context.Context, uuid string) (Source, error) {
	var src Source
	var first, last, unclean int64
	err := s.db.QueryRowContext(ctx, `SELECT uuid, name, hostname, capture_id, last_seq, partial_seq, partial_records,
		packets, bytes, batches, duplicates, kernel_drops, interface_drops, agent_drops, first_seen, last_seen, state, state_detail,
		ended_unclean_at, owner
		FROM sources WHERE uuid = ?`, uuid).Scan(&src.UUID, &src.Name, &src.Hostname, &src.CaptureID, &src.LastSeq,
		&src.PartialSeq, &src.PartialRecords, &src.Packets, &src.Bytes, &src.Batches, &src.Duplicates,
		&src.KernelDrops, &src.InterfaceDrops, &src.AgentDrops, &first, &last, &src.State, &src.StateDetail, &unclean, &src.Owner)
	if errors.Is(err, sql.ErrNoRows) {
		return src, ErrNotFound
	}
	if err != nil {
		return src, fmt.Errorf("read source %s: %w", uuid, err)
	}
	src.FirstSeen, src.LastSeen = time.Unix(0, first), time.Unix(0, last)
	if unclean != 0 {
		src.EndedUncleanAt = time.Unix(0, unclean)
	}
	return src, nil
}

// Sources returns every source, by name.
func (s *Store) Sources(ctx context.Context) ([]Source, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT uuid FROM sources ORDER BY name, uuid`)
	if err != nil {
		return nil, err
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	out := make([]Source, 0, len(ids))
	for _, id := range ids {
		src, err := s.GetSource(ctx, id)
		if err != nil {
			return nil, err
		}
		out = append(out, src)
	}
	return out, nil
}

// StartCapture records that a source is streaming capture run captureID.
// A new capture run resets the seq state; the same run keeps it.
func (s *Store) StartCapture(ctx context.Context, uuid, name, hostname, captureID string) (Source, error) {
	now := time.Now().UnixNano()
	_, err := s.db.ExecContext(ctx, `INSERT INTO sources (uuid, name, hostname, capture_id, first_seen, last_seen)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT(uuid) DO UPDATE SET name = excluded.name, hostname = excluded.hostname, last_seen = excluded.last_seen,
			last_seq        = CASE WHEN capture_id = excluded.capture_id THEN last_seq ELSE 0 END,
			partial_seq     = CASE WHEN capture_id = excluded.capture_id THEN partial_seq ELSE 0 END,
			partial_records = CASE WHEN capture_id = excluded.capture_id THEN partial_records ELSE 0 END,
			capture_id = excluded.capture_id`,
		uuid, name, hostname, captureID, now, now)
	if err != nil {
		return Source{}, fmt.Errorf("record source %s: %w", uuid, err)
	}
	return s.GetSource(ctx, uuid)
}

// NewFile adds an open file to the catalog before it is created on disk.
func (s *Store) NewFile(ctx context.Context, f File) (int64, error) {
	res, err := s.db.ExecContext(ctx, `INSERT INTO files (source_uuid, path, state, link_type, snaplen, size, created_at, writer)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, f.SourceUUID, f.Path, FileOpen, f.LinkType, f.Snaplen, f.Size, time.Now().UnixNano(), f.Writer)
	if err != nil {
		return 0, fmt.Errorf("catalog file %s: %w", f.Path, err)
	}
	return res.LastInsertId()
}

// DropFile removes a catalog entry whose file could not be created.
func (s *Store) DropFile(ctx context.Context, id int64) error {
	_, err := s.db.ExecContext(ctx, `DELETE FROM files WHERE id = ?`, id)
	return err
}

// CloseFile marks a file closed at its final size.
func (s *Store) CloseFile(ctx context.Context, id, size int64) error {
	_, err := s.db.ExecContext(ctx, `UPDATE files SET state = ?, closed_at = ?, size = ? WHERE id = ?`, FileClosed, time.Now().UnixNano(), size, id)
	if err != nil {
		return fmt.Errorf("catalog: close file %d: %w", id, err)
	}
	return nil
}

// SetFileState sets a file's state.
func (s *Store) SetFileState(ctx context.Context, id int64, st FileState) error {
	_, err := s.db.ExecContext(ctx, `UPDATE files SET state = ? WHERE id = ?`, st, id)
	return err
}

// Files returns catalog entries in the given states (all when none),
// ordered by source and first timestamp.
func (s *Store) Files(ctx context.Context, states ...FileState) ([]File, error) {
	q := `SELECT ` + fileColumns + ` FROM files`
	var args []any
	if len(states) > 0 {
		q += ` WHERE state IN (?` + repeat(",?", len(states)-1) + `)`
		for _, st := range states {
			args = append(args, st)
		}
	}
	q += ` ORDER BY source_uuid, first_ts, id`
	return s.queryFiles(ctx, q, args...)
}

const fileColumns = `id, source_uuid, path, state, link_type, snaplen, size, packets, bytes, first_ts, last_ts, created_at, closed_at, deleted_at, writer`

func (s *Store) queryFiles(ctx context.Context, q string, args ...any) ([]File, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("list files: %w", err)
	}
	defer rows.Close()
	var out []File
	for rows.Next() {
		var f File
		var created, closed, deleted int64
		if err := rows.Scan(&f.ID, &f.SourceUUID, &f.Path, &f.State, &f.LinkType, &f.Snaplen, &f.Size, &f.Packets,
			&f.Bytes, &f.FirstTS, &f.LastTS, &created, &closed, &deleted, &f.Writer); err != nil {
			return nil, err
		}
		f.CreatedAt = time.Unix(0, created)
		if closed != 0 {
			f.ClosedAt = time.Unix(0, closed)
		}
		if deleted != 0 {
			f.DeletedAt = time.Unix(0, deleted)
		}
		out = append(out, f)
	}
	return out, rows.Err()
}

func repeat(s string, n int) string {
	out := ""
	for range n {
		out += s
	}
	return out
}

// RepairFile records what recovery found in a file that was open when the
// collector stopped: its committed size, and the records of the batch that
// follows lastSeq found past the old committed size. It closes the file.
func (s *Store) RepairFile(ctx context.Context, f File, extra FileDelta, src string, partialSeq uint64, partialRecords int) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `UPDATE files SET state = ?, closed_at = ?, size = size + ?, packets = packets + ?, bytes = bytes + ?,
		first_ts = CASE WHEN first_ts = 0 THEN ? ELSE first_ts END, last_ts = CASE WHEN ? > 0 THEN ? ELSE last_ts END WHERE id = ?`,
		FileClosed, time.Now().UnixNano(), extra.Size, extra.Packets, extra.Bytes, extra.FirstTS, extra.LastTS, extra.LastTS, f.ID); err != nil {
		return err
	}
	if partialRecords > 0 {
		if _, err := tx.ExecContext(ctx, `UPDATE sources SET partial_seq = ?, partial_records = partial_records + ?,
			packets = packets + ?, bytes = bytes + ? WHERE uuid = ?`,
			partialSeq, partialRecords, extra.Packets, extra.Bytes, src); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// FileDelta is what one batch adds to a file.
type FileDelta struct {
	Size    int64
	Packets uint64
	Bytes   uint64
	FirstTS int64
	LastTS  int64
}

// BatchCommit is the state change of one stored batch.
type BatchCommit struct {
	SourceUUID string
	Seq        uint64
	// Counters adds to the source's totals.
	Counters Counters
	// FileID, when non-zero, is the file the batch went to.
	FileID int64
	File   FileDelta
}

type commitReq struct {
	c    BatchCommit
	done chan error
}

// CommitBatch records a stored batch: the source's last seq, its counters
// and the file's new size, in a transaction shared with concurrent callers.
// It returns once the transaction is committed.
func (s *Store) CommitBatch(ctx context.Context, c BatchCommit) error {
	// Checked here, not in the shared transaction: one bad commit must
	// not fail the others grouped with it.
	if c.Seq > math.MaxInt64 {
		return fmt.Errorf("%w: seq %d", ErrCounterRange, c.Seq)
	}
	if err := c.Counters.check(); err != nil {
		return err
	}
	if f := &c.File; f.Packets > MaxIncrement || f.Bytes > MaxIncrement || f.Size < 0 || f.Size > MaxIncrement {
		return fmt.Errorf("%w: file delta %+v", ErrCounterRange, *f)
	}
	req := &commitReq{c: c, done: make(chan error, 1)}
	select {
	case s.commit <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		// The commit may still happen; the batch is then a duplicate
		// when the agent sends it again.
		return ctx.Err()
	}
}

// committer applies commit requests, as many per transaction as are
// waiting.
func (s *Store) committer() {
	defer close(s.done)
	const maxGroup = 256
	group := make([]*commitReq, 0, maxGroup)
	for req := range s.commit {
		group = append(group[:0], req)
	drain:
		for len(group) < maxGroup {
			select {
			case r, ok := <-s.commit:
				if !ok {
					break drain
				}
				group = append(group, r)
			default:
				break drain
			}
		}
		err := full(s.apply(group))
		for _, r := range group {
			r.done <- err
		}
	}
}

func (s *Store) apply(group []*commitReq) error {
	tx, err := s.db.Begin()
	if err != nil {
		return fmt.Errorf("state database: %w", err)
	}
	defer tx.Rollback()
	now := time.Now().UnixNano()
	for _, r := range group {
		c := &r.c
		k := &c.Counters
		if _, err := tx.Exec(`UPDATE sources SET last_seq = ?, partial_seq = 0, partial_records = 0, last_seen = ?,
			`+addCapped("packets")+`, `+addCapped("bytes")+`, `+addCapped("batches")+`, `+addCapped("duplicates")+`,
			`+addCapped("kernel_drops")+`, `+addCapped("interface_drops")+`, `+addCapped("agent_drops")+`
			WHERE uuid = ?`, int64(c.Seq), now, k.Packets, k.Bytes, k.Batches, k.Duplicates, k.KernelDrops, k.InterfaceDrops,
			k.AgentDrops, c.SourceUUID); err != nil {
			return fmt.Errorf("state database: %w", err)
		}
		if c.FileID != 0 {
			f := &c.File
			if _, err := tx.Exec(`UPDATE files SET size = size + ?, packets = packets + ?, bytes = bytes + ?,
				first_ts = CASE WHEN first_ts = 0 THEN ? ELSE first_ts END, last_ts = ? WHERE id = ?`,
				f.Size, f.Packets, f.Bytes, f.FirstTS, f.LastTS, c.FileID); err != nil {
				return fmt.Errorf("state database: %w", err)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("state database: %w", err)
	}
	return nil
}

// AddDuplicates adds to a source's count of batches received twice.
func (s *Store) AddDuplicates(ctx context.Context, uuid string, n uint64) error {
	_, err := s.db.ExecContext(ctx, `UPDATE sources SET `+addCapped("duplicates")+` WHERE uuid = ?`, min(n, MaxIncrement), uuid)
	return err
}

// Counters and seqs are SQLite integers, signed 64-bit: a sum past that
// would turn into a float, which no reader could scan. Totals stop at
// MaxCounter and one update adds at most MaxIncrement, so no sum overflows.
const (
	MaxCounter   = 1 << 62
	MaxIncrement = 1 << 60
)

// addCapped is the SQL that adds a parameter to column col, saturating at
// MaxCounter.
func addCapped(col string) string {
	return fmt.Sprintf("%s = MIN(%s + ?, %d)", col, col, MaxCounter)
}

// ErrFull says the database could not commit because its disk is full
// (SQLITE_FULL): nothing was recorded, and a retry once space is back can
// succeed.
var ErrFull = errors.New("state database: disk full")

// full marks an SQLITE_FULL error with ErrFull.
func full(err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_FULL {
		return fmt.Errorf("%w: %w", ErrFull, err)
	}
	return err
}

// ErrCounterRange is a counter increment or seq that cannot be valid.
var ErrCounterRange = errors.New("counter out of range")

func (c *Counters) check() error {
	for _, v := range []uint64{c.Packets, c.Bytes, c.Batches, c.Duplicates, c.KernelDrops, c.InterfaceDrops, c.AgentDrops} {
		if v > MaxIncrement {
			return fmt.Errorf("%w: increment %d over %d", ErrCounterRange, v, uint64(MaxIncrement))
		}
	}
	return nil
}
