"""The projection tables and their versioned migrations.

Each migration is a numbered list of statements with `{db}` standing for the database; the
`schema_migrations` table records which numbers ran. Migrations only ever add (new tables, new
columns with defaults), so a newer projector can start on an older database, and any table can
be rebuilt from the log instead of migrated in place.

Fold tables (`series`, `jobs`, `pending_studies`) are ReplacingMergeTree(version): the
projector writes whole rows, the highest version of a key wins, queries read them with FINAL.
`events` and `audit` keep each event once: identical copies share their sorting key and collapse.
"""

from dataclasses import dataclass

_DT = "DateTime64(6, 'UTC')"
_WHEN = f"Nullable({_DT})"


@dataclass(frozen=True, kw_only=True)
class Migration:
    number: int
    name: str
    statements: tuple[str, ...]


# Tables a rebuild replaces; the bookkeeping tables stay where they are.
PROJECTION_TABLES = ("events", "audit", "series", "jobs", "pending_studies")

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        number=1,
        name="projection tables",
        statements=(
            f"""CREATE TABLE IF NOT EXISTS {{db}}.events (
                entity String, occurred_at {_DT}, event_id String,
                type LowCardinality(String), version UInt16, source String, subject String,
                study_uid String, series_uids Array(String), job_id String, target String,
                causation_id String, correlation_id String, actor String, payload String,
                topic LowCardinality(String), partition UInt32, offset UInt64
            ) ENGINE = ReplacingMergeTree ORDER BY (entity, occurred_at, event_id)""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.audit (
                occurred_at {_DT}, event_id String, category LowCardinality(String),
                type LowCardinality(String), actor String, name String,
                before String, after String, details String
            ) ENGINE = ReplacingMergeTree ORDER BY (occurred_at, event_id)""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.series (
                series_uid String, study_uid String,
                patient_name String, patient_key String, patient_id String, patient_id_key String,
                accession_number String, modality LowCardinality(String),
                study_description String, series_description String, series_date String,
                sender_aet LowCardinality(String), receiver_aet LowCardinality(String),
                tags Map(String, String), tags_event String, tags_at {_WHEN},
                tags_from_completion Bool,
                instance_count UInt32, first_received_at {_WHEN}, last_received_at {_WHEN},
                completed_at {_WHEN}, completions UInt32,
                matched_rules Array(String), rules_event String, rules_at {_WHEN},
                study_rules Array(String), deferred_rules Array(String),
                discarded_at {_WHEN}, discard_reason String, discarded_by String,
                purged_at {_WHEN}, jobs Map(String, String), status LowCardinality(String),
                positions Map(String, Int64), version UInt64, updated_at {_DT}
            ) ENGINE = ReplacingMergeTree(version) ORDER BY series_uid""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.jobs (
                job_id String, target String, kind LowCardinality(String), study_uid String,
                series_uids Array(String), rule String, rules Array(String),
                lane LowCardinality(String), outcome LowCardinality(String), outcome_at {_WHEN},
                state LowCardinality(String), attempts UInt32, next_retry_at {_WHEN},
                queued_at {_WHEN}, started_at {_WHEN}, finished_at {_WHEN},
                error String, result String, retry_requested_at {_WHEN}, cancelled_at {_WHEN},
                positions Map(String, Int64), version UInt64, updated_at {_DT}
            ) ENGINE = ReplacingMergeTree(version) ORDER BY (job_id, target)""",
            f"""CREATE TABLE IF NOT EXISTS {{db}}.pending_studies (
                study_uid String, rule String, condition LowCardinality(String),
                required_series String, force_action LowCardinality(String),
                series_uids Array(String), first_deferred_at {_WHEN}, last_deferred_at {_WHEN},
                completed_at {_WHEN}, completion_reason String, completion_action String,
                forced_at {_WHEN}, status LowCardinality(String),
                positions Map(String, Int64), version UInt64, updated_at {_DT}
            ) ENGINE = ReplacingMergeTree(version) ORDER BY (study_uid, rule)""",
            """CREATE TABLE IF NOT EXISTS {db}.projector_generation (
                generation UInt64, created_at DateTime64(3, 'UTC')
            ) ENGINE = ReplacingMergeTree ORDER BY generation""",
        ),
    ),
    Migration(
        number=2,
        name="processing steps of jobs",
        statements=(
            "ALTER TABLE {db}.jobs ADD COLUMN IF NOT EXISTS steps UInt32 DEFAULT 0",
            "ALTER TABLE {db}.jobs ADD COLUMN IF NOT EXISTS steps_done UInt32 DEFAULT 0",
        ),
    ),
)

BOOKKEEPING = """CREATE TABLE IF NOT EXISTS {db}.schema_migrations (
    number UInt32, name String, applied_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree ORDER BY number"""
