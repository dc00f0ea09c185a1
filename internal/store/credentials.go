package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Token is a stored API token: its hash, never the token.
type Token struct {
	ID        string
	Name      string
	Role      string
	Hash      string
	CreatedAt time.Time
	ExpiresAt time.Time // zero: never
	RevokedAt time.Time // zero: not revoked
	LastUsed  time.Time
	// Sources, when not empty, are the path.Match patterns of the source
	// names the token may create and stream; empty allows any name.
	Sources []string
}

func unixOrZero(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func nsOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// AddToken stores a token.
func (s *Store) AddToken(ctx context.Context, t Token) error {
	for _, p := range t.Sources {
		if p == "" || strings.Contains(p, ",") {
			return fmt.Errorf("store token: source pattern %q is empty or holds a comma", p)
		}
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO tokens (id, name, role, hash, created_at, expires_at, sources) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		t.ID, t.Name, t.Role, t.Hash, time.Now().UnixNano(), nsOrZero(t.ExpiresAt), strings.Join(t.Sources, ","))
	if err != nil {
		return fmt.Errorf("store token: %w", err)
	}
	return nil
}

const tokenCols = `id, name, role, hash, created_at, expires_at, revoked_at, last_used, sources`

func scanToken(row interface{ Scan(...any) error }) (Token, error) {
	var t Token
	var c, e, r, l int64
	var sources string
	if err := row.Scan(&t.ID, &t.Name, &t.Role, &t.Hash, &c, &e, &r, &l, &sources); err != nil {
		return t, err
	}
	if sources != "" {
		t.Sources = strings.Split(sources, ",")
	}
	t.CreatedAt, t.ExpiresAt, t.RevokedAt, t.LastUsed = unixOrZero(c), unixOrZero(e), unixOrZero(r), unixOrZero(l)
	return t, nil
}

// GetToken returns the token with id.
func (s *Store) GetToken(ctx context.Context, id string) (Token, error) {
	t, err := scanToken(s.db.QueryRowContext(ctx, `SELECT `+tokenCols+` FROM tokens WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return t, ErrNotFound
	}
	return t, err
}

// Tokens lists every token, newest first.
func (s *Store) Tokens(ctx context.Context) ([]Token, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+tokenCols+` FROM tokens ORDER BY created_at DESC`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Token
	for rows.Next() {
		t, err := scanToken(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// RevokeToken revokes the tokens whose id or name is idOrName, and returns
// how many it revoked.
func (s *Store) RevokeToken(ctx context.Context, idOrName string) (int, error) {
	id := strings.TrimPrefix(idOrName, "tst_")
	if i := strings.IndexByte(id, '_'); i > 0 {
		id = id[:i] // a whole token was given
	}
	res, err := s.db.ExecContext(ctx, `UPDATE tokens SET revoked_at = ? WHERE (id = ? OR name = ?) AND revoked_at = 0`,
		time.Now().UnixNano(), id, idOrName)
	if err != nil {
		return 0, err
	}
	n, err := res.RowsAffected()
	return int(n), err
}

// TouchToken records that a token was used.
func (s *Store) TouchToken(ctx context.Context, id string) error {
	_, err := s.db.ExecContext(ctx, `UPDATE tokens SET last_used = ? WHERE id = ?`, time.Now().UnixNano(), id)
	return err
}

// User is a stored user: its password hash, never the password.
type User struct {
	Name      string
	Role      string
	Hash      string
	CreatedAt time.Time
	Disabled  bool
}

// AddUser stores a user; an existing name is an error.
func (s *Store) AddUser(ctx context.Context, u User) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO users (name, role, hash, created_at) VALUES (?, ?, ?, ?)`,
		u.Name, u.Role, u.Hash, time.Now().UnixNano())
	if err != nil && strings.Contains(err.Error(), "UNIQUE") {
		return fmt.Errorf("user %q exists already", u.Name)
	}
	return err
}

// GetUser returns the user called name.
func (s *Store) GetUser(ctx context.Context, name string) (User, error) {
	var u User
	var c, d int64
	err := s.db.QueryRowContext(ctx, `SELECT name, role, hash, created_at, disabled_at FROM users WHERE name = ?`, name).
		Scan(&u.Name, &u.Role, &u.Hash, &c, &d)
	if errors.Is(err, sql.ErrNoRows) {
		return u, ErrNotFound
	}
	u.CreatedAt, u.Disabled = unixOrZero(c), d != 0
	return u, err
}

// Users lists every user by name.
func (s *Store) Users(ctx context.Context) ([]User, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT name, role, created_at, disabled_at FROM users ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []User
	for rows.Next() {
		var u User
		var c, d int64
		if err := rows.Scan(&u.Name, &u.Role, &c, &d); err != nil {
			return nil, err
		}
		u.CreatedAt, u.Disabled = unixOrZero(c), d != 0
		out = append(out, u)
	}
	return out, rows.Err()
}

// DisableUser stops a user from signing in; it returns false if there is
// no such user.
func (s *Store) DisableUser(ctx context.Context, name string) (bool, error) {
	res, err := s.db.ExecContext(ctx, `UPDATE users SET disabled_at = ? WHERE name = ? AND disabled_at = 0`, time.Now().UnixNano(), name)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}
