package store

import (
	"context"
	"database/sql"
	"fmt"
	"time"
)

// Gap is a stretch of a source's capture that the collector knows it does
// not have: the agent ended abnormally, and what it had captured but not
// yet spooled or sent was lost uncounted.
type Gap struct {
	ID         int64
	SourceUUID string
	// From is the last packet stored before the gap and To the first
	// after it (packet times, ns); zero when there was none.
	From, To   int64
	DetectedAt time.Time
	Reason     string
}

// MaxGapsPerSource bounds the gaps kept per source: the oldest go first.
const MaxGapsPerSource = 1000

// AddGap records a gap, and forgets the source's oldest beyond
// MaxGapsPerSource.
func (s *Store) AddGap(ctx context.Context, g Gap) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO gaps (source_uuid, from_ts, to_ts, detected_at, reason) VALUES (?, ?, ?, ?, ?)`,
		g.SourceUUID, g.From, g.To, time.Now().UnixNano(), g.Reason)
	if err != nil {
		return fmt.Errorf("catalog: record gap of source %s: %w", g.SourceUUID, err)
	}
	_, err = s.db.ExecContext(ctx, `DELETE FROM gaps WHERE source_uuid = ? AND id NOT IN
		(SELECT id FROM gaps WHERE source_uuid = ? ORDER BY id DESC LIMIT ?)`, g.SourceUUID, g.SourceUUID, MaxGapsPerSource)
	if err != nil {
		return fmt.Errorf("catalog: trim gaps of source %s: %w", g.SourceUUID, err)
	}
	return nil
}

// Gaps returns the gaps of the given sources (all when none), by source
// and time.
func (s *Store) Gaps(ctx context.Context, sourceUUIDs ...string) ([]Gap, error) {
	q := `SELECT id, source_uuid, from_ts, to_ts, detected_at, reason FROM gaps`
	var args []any
	if len(sourceUUIDs) > 0 {
		q += ` WHERE source_uuid IN (?` + repeat(",?", len(sourceUUIDs)-1) + `)`
		for _, u := range sourceUUIDs {
			args = append(args, u)
		}
	}
	rows, err := s.db.QueryContext(ctx, q+` ORDER BY source_uuid, from_ts, id`, args...)
	if err != nil {
		return nil, fmt.Errorf("catalog: list gaps: %w", err)
	}
	defer rows.Close()
	var out []Gap
	for rows.Next() {
		var g Gap
		var at int64
		if err := rows.Scan(&g.ID, &g.SourceUUID, &g.From, &g.To, &at, &g.Reason); err != nil {
			return nil, err
		}
		g.DetectedAt = time.Unix(0, at)
		out = append(out, g)
	}
	return out, rows.Err()
}

// SetEndedUnclean records when a source's stream ended without the agent's
// clean end; the zero time clears it.
func (s *Store) SetEndedUnclean(ctx context.Context, uuid string, at time.Time) error {
	var ns int64
	if !at.IsZero() {
		ns = at.UnixNano()
	}
	_, err := s.db.ExecContext(ctx, `UPDATE sources SET ended_unclean_at = ? WHERE uuid = ?`, ns, uuid)
	if err != nil {
		return fmt.Errorf("record end of source %s: %w", uuid, err)
	}
	return nil
}

// LastPacket returns the time of the last packet stored for a source (ns),
// or zero.
func (s *Store) LastPacket(ctx context.Context, uuid string) (int64, error) {
	var ts sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT MAX(last_ts) FROM files WHERE source_uuid = ? AND packets > 0`, uuid).Scan(&ts)
	if err != nil {
		return 0, fmt.Errorf("catalog: last packet of source %s: %w", uuid, err)
	}
	return ts.Int64, nil
}
