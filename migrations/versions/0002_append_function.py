"""taskstream_append(batch, notify): a whole group commit decided and written in one statement.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

The function takes the append lock, reads the versions of every stream in the batch and the
known idempotency keys, then decides each append in order (a known key replays or is refused;
every part's expected version must hold, all or nothing; versions follow the stream's, as
updated by earlier appends in the batch), writes all new events with one INSERT, and records
the keys with their results. It returns one outcome per append and the positions written.
Run as a single autocommit statement, a group commit is one network round trip; the lock is
held from the first read to the end of the commit's flush, and no longer.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APPEND_FUNCTION = r"""
CREATE OR REPLACE FUNCTION taskstream_append(batch jsonb, notify boolean DEFAULT true) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    item      jsonb;
    part      jsonb;
    expected  jsonb;
    versions  jsonb;   -- stream -> current version, read once under the lock, then kept up to date
    known     jsonb;   -- idempotency key -> {fingerprint, result} or {fingerprint, index} (this batch)
    current   bigint;
    idx       integer;
    j         integer;
    k         integer;
    ev        jsonb;
    ids       jsonb;
    failure   jsonb;
    written   jsonb;
    new_rows  jsonb[] := '{}';
    outcomes  jsonb[] := '{}';
    positions jsonb := '{}'::jsonb;
BEGIN
    PERFORM pg_advisory_xact_lock(7306010001);  -- APPEND_LOCK_KEY of migration 0001: they must match
    SELECT COALESCE(jsonb_object_agg(s.stream,
               COALESCE((SELECT max(e.version) FROM events e WHERE e.stream_id = s.stream), 0)), '{}'::jsonb)
      INTO versions
      FROM (SELECT DISTINCT p->>'stream' AS stream
              FROM jsonb_array_elements(batch) a, jsonb_array_elements(a->'parts') p) s;
    SELECT COALESCE(jsonb_object_agg(k.key, jsonb_build_object('fingerprint', k.fingerprint, 'result', k.result)), '{}'::jsonb)
      INTO known
      FROM idempotency_keys k
     WHERE k.key IN (SELECT a->>'key' FROM jsonb_array_elements(batch) a WHERE a->>'key' IS NOT NULL);

    FOR idx IN 1 .. jsonb_array_length(batch) LOOP
        -- Integer loops and plain expressions only: no query per append (PL/pgSQL runs a query
        -- through SPI, which costs tens of microseconds; an expression costs about one).
        item := batch->(idx - 1);
        IF item->>'key' IS NOT NULL AND known ? (item->>'key') THEN
            IF known->(item->>'key')->>'fingerprint' IS DISTINCT FROM item->>'fingerprint' THEN
                outcomes := outcomes || jsonb_build_object('kind', 'key_reused', 'key', item->>'key');
            ELSIF known->(item->>'key') ? 'index' THEN
                outcomes := outcomes || jsonb_build_object('kind', 'replay_of', 'index', known->(item->>'key')->'index');
            ELSE
                outcomes := outcomes || jsonb_build_object('kind', 'replay', 'parts', known->(item->>'key')->'result'->'parts');
            END IF;
            CONTINUE;
        END IF;

        failure := NULL;
        FOR j IN 0 .. jsonb_array_length(item->'parts') - 1 LOOP
            part := item->'parts'->j;
            current := (versions->>(part->>'stream'))::bigint;
            expected := part->'expected';
            IF NOT (expected = '"any"'::jsonb
                    OR (expected = '"no_stream"'::jsonb AND current = 0)
                    OR (jsonb_typeof(expected) = 'number' AND expected::bigint = current)) THEN
                failure := jsonb_build_object('kind', 'wrong_version', 'stream', part->>'stream',
                                              'expected', expected, 'actual', current);
                EXIT;
            END IF;
        END LOOP;
        IF failure IS NOT NULL THEN
            outcomes := outcomes || failure;
            CONTINUE;
        END IF;

        written := '[]'::jsonb;
        FOR j IN 0 .. jsonb_array_length(item->'parts') - 1 LOOP
            part := item->'parts'->j;
            current := (versions->>(part->>'stream'))::bigint;
            ids := '[]'::jsonb;
            FOR k IN 0 .. jsonb_array_length(part->'events') - 1 LOOP
                ev := part->'events'->k;
                current := current + 1;
                new_rows := new_rows || jsonb_build_object(
                    'stream_id', part->'stream', 'version', current, 'event_id', ev->'id', 'type', ev->'type',
                    'schema_version', ev->'schema_version', 'data', ev->'data', 'metadata', item->'metadata');
                ids := ids || (ev->'id');
            END LOOP;
            versions := versions || jsonb_build_object(part->>'stream', current);
            written := written || jsonb_build_object('stream', part->'stream', 'version', current, 'event_ids', ids);
        END LOOP;
        outcomes := outcomes || jsonb_build_object('kind', 'new', 'parts', written,
                                                   'key', item->'key', 'fingerprint', item->'fingerprint');
        IF item->>'key' IS NOT NULL THEN
            known := known || jsonb_build_object(item->>'key', jsonb_build_object('fingerprint', item->>'fingerprint', 'index', idx));
        END IF;
    END LOOP;

    IF cardinality(new_rows) > 0 THEN
        -- One INSERT for the whole batch, in order: versions and positions rise together.
        WITH inserted AS (
            INSERT INTO events (stream_id, version, event_id, type, schema_version, data, metadata)
            SELECT r.stream_id, r.version, r.event_id, r.type, r.schema_version, r.data, r.metadata
              FROM unnest(new_rows) WITH ORDINALITY AS u(row, ord),
                   jsonb_to_record(u.row) AS r(stream_id text, version bigint, event_id uuid, type text,
                                               schema_version integer, data jsonb, metadata jsonb)
             ORDER BY u.ord
            RETURNING event_id, global_position
        )
        SELECT jsonb_object_agg(event_id::text, global_position) INTO positions FROM inserted;
        IF notify THEN
            PERFORM pg_notify('taskstream_events', '');
        END IF;
    END IF;
    -- Keys are kept for every decided append, also one that wrote nothing (a no-op command):
    -- a retry must replay it, and the key reused with another request must be refused.
    INSERT INTO idempotency_keys (key, fingerprint, stream_id, result)
    SELECT o->>'key', o->>'fingerprint', o->'parts'->0->>'stream', jsonb_build_object('parts',
           (SELECT jsonb_agg(p || jsonb_build_object(
                       'first_position', (positions->>(p->'event_ids'->>0))::bigint,
                       'last_position', (positions->>(p->'event_ids'->>-1))::bigint)
                     ORDER BY n)
              FROM jsonb_array_elements(o->'parts') WITH ORDINALITY AS x(p, n)))
      FROM unnest(outcomes) AS o
     WHERE o->>'kind' = 'new' AND o->>'key' IS NOT NULL;
    RETURN jsonb_build_object('outcomes', to_jsonb(outcomes), 'positions', positions);
END $$
"""


def upgrade() -> None:
    op.execute(APPEND_FUNCTION)
    op.execute("COMMENT ON FUNCTION taskstream_append(jsonb, boolean) IS 'One group commit of appends: see migration 0002'")


def downgrade() -> None:
    op.execute("DROP FUNCTION taskstream_append(jsonb, boolean)")
