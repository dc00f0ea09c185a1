package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
)

// OwnedError refuses a claim on a source that belongs to another
// credential: by its UUID, or by its name (two UUIDs of one name share a
// directory and extract --source NAME).
type OwnedError struct {
	UUID, Name string
	ByName     bool   // another UUID of the same name is owned
	Owner      string // the credential that owns it
}

func (e *OwnedError) Error() string {
	if e.ByName {
		return fmt.Sprintf("source name %q belongs to %s (source %s)", e.Name, e.Owner, e.UUID)
	}
	return fmt.Sprintf("source %s (%s) belongs to %s", e.UUID, e.Name, e.Owner)
}

// LimitError refuses a new source to a credential that owns its maximum.
type LimitError struct {
	Owner string
	Max   int
}

func (e *LimitError) Error() string {
	return fmt.Sprintf("%s owns %d sources already, the most one credential may", e.Owner, e.Max)
}

// OwnerInsecure owns the sources streamed to a collector without
// credentials (--insecure). It is no identity: it is never refused, and
// the sources it owns go to the first credential that streams them once
// the collector requires credentials.
const OwnerInsecure = "insecure"

// ClaimSource checks that owner may stream source uuid under name, and
// records the source as owner's when it is new or has no owner yet. It
// refuses with *OwnedError when the UUID, or another UUID of the same name,
// belongs to another credential (OwnerInsecure and "" are nobody), and
// with *LimitError when a new claim would give owner more than maxOwned
// sources (zero: no limit). It reports whether it claimed the source.
// Claims are serialised by the database, so concurrent claims cannot pass
// the limit.
func (s *Store) ClaimSource(ctx context.Context, uuid, name, owner string, maxOwned int) (claimed bool, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("claim source %s: %w", uuid, err)
	}
	defer tx.Rollback()
	var cur string
	err = tx.QueryRowContext(ctx, `SELECT owner FROM sources WHERE uuid = ?`, uuid).Scan(&cur)
	exists := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("claim source %s: %w", uuid, err)
	}
	if owner == OwnerInsecure {
		// No credentials: nothing to check, and nobody's source to take.
		if !exists {
			now := time.Now().UnixNano()
			if _, err := tx.ExecContext(ctx, `INSERT INTO sources (uuid, name, owner, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)`,
				uuid, name, owner, now, now); err != nil {
				return false, fmt.Errorf("claim source %s: %w", uuid, err)
			}
			return true, tx.Commit()
		}
		return false, nil
	}
	ownerless := cur == "" || cur == OwnerInsecure
	if exists && !ownerless && cur != owner {
		return false, &OwnedError{UUID: uuid, Name: name, Owner: cur}
	}
	var otherUUID, otherOwner string
	err = tx.QueryRowContext(ctx, `SELECT uuid, owner FROM sources WHERE name = ? AND uuid != ? AND owner NOT IN ('', ?, ?) LIMIT 1`,
		name, uuid, OwnerInsecure, owner).Scan(&otherUUID, &otherOwner)
	if err == nil {
		return false, &OwnedError{UUID: otherUUID, Name: name, Owner: otherOwner, ByName: true}
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return false, fmt.Errorf("claim source %s: %w", uuid, err)
	}
	if exists && cur == owner {
		return false, nil
	}
	if maxOwned > 0 {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sources WHERE owner = ?`, owner).Scan(&n); err != nil {
			return false, fmt.Errorf("claim source %s: %w", uuid, err)
		}
		if n >= maxOwned {
			return false, &LimitError{Owner: owner, Max: maxOwned}
		}
	}
	if exists {
		_, err = tx.ExecContext(ctx, `UPDATE sources SET owner = ? WHERE uuid = ?`, owner, uuid)
	} else {
		now := time.Now().UnixNano()
		_, err = tx.ExecContext(ctx, `INSERT INTO sources (uuid, name, owner, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)`,
			uuid, name, owner, now, now)
	}
	if err != nil {
		return false, fmt.Errorf("claim source %s: %w", uuid, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("claim source %s: %w", uuid, err)
	}
	return true, nil
}

// SourceOwner returns the credential that owns source uuid ("" when none).
func (s *Store) SourceOwner(ctx context.Context, uuid string) (string, error) {
	var owner string
	err := s.db.QueryRowContext(ctx, `SELECT owner FROM sources WHERE uuid = ?`, uuid).Scan(&owner)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("read owner of source %s: %w", uuid, err)
	}
	return owner, nil
}

// SetSourceOwner gives every source whose UUID or name is uuidOrName to
// owner ("" leaves them to the next credential that streams them), and
// returns the sources it changed.
func (s *Store) SetSourceOwner(ctx context.Context, uuidOrName, owner string) ([]Source, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	// A UUID picks that source alone, never one whose name spells it.
	q, args := `SELECT uuid, name, owner FROM sources WHERE uuid = ? OR name = ? ORDER BY name, uuid`, []any{uuidOrName, uuidOrName}
	if _, err := uuid.Parse(uuidOrName); err == nil {
		q, args = `SELECT uuid, name, owner FROM sources WHERE uuid = ?`, []any{uuidOrName}
	}
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("reassign source %s: %w", uuidOrName, err)
	}
	var out []Source
	for rows.Next() {
		var src Source
		if err := rows.Scan(&src.UUID, &src.Name, &src.Owner); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, src)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, ErrNotFound
	}
	if _, err := tx.ExecContext(ctx, `UPDATE sources SET owner = ? WHERE uuid = ? OR name = ?`, owner, uuidOrName, uuidOrName); err != nil {
		return nil, fmt.Errorf("reassign source %s: %w", uuidOrName, err)
	}
	return out, tx.Commit()
}
