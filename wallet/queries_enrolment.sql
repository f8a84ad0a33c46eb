-- Named queries of wallet/enrolment.py. Programs and their versions are the back office's
-- (migration 0004, read only here); enrolments and their counters are ours (0005).

-- name: program
SELECT id, code, status FROM programs WHERE id = $1;

-- name: enrolment_of
SELECT id, program_id, citizen_id, program_version, status, enrolled_at, first_use_deadline,
       first_used_at
FROM enrolments
WHERE program_id = $1 AND citizen_id = $2;

-- name: citizen_profile
-- What eligibility needs, with the codes of the programs the citizen holds (active rights).
SELECT c.birth_date, c.nationality, c.province_code, c.district_code, c.taxpayer,
       array(SELECT p.code FROM enrolments e JOIN programs p ON p.id = e.program_id
             WHERE e.citizen_id = c.id AND e.status = 'active' ORDER BY p.code) AS held_codes
FROM citizens c
WHERE c.id = $1;

-- name: enrolment_context
-- One snapshot: the profile, the citizen's enrolment in program $2 if any, and the count.
SELECT c.birth_date, c.nationality, c.province_code, c.district_code, c.taxpayer,
       array(SELECT p.code FROM enrolments e JOIN programs p ON p.id = e.program_id
             WHERE e.citizen_id = c.id AND e.status = 'active' ORDER BY p.code) AS held_codes,
       (SELECT e.id FROM enrolments e WHERE e.program_id = $2 AND e.citizen_id = c.id)
           AS existing_id,
       (SELECT n.enrolled FROM enrolment_counters n WHERE n.program_id = $2) AS enrolled
FROM citizens c
WHERE c.id = $1;

-- name: enrol
-- $1 id, $2 program, $3 citizen, $4 version, $5 now, $6 first-use deadline, $7 quota.
-- One statement, so one implicit transaction: the enrolment is inserted unless the citizen
-- has one, and counted only if inserted; a count beyond the quota breaks the counter's CHECK
-- (enrolment_counters_within_quota), which aborts the statement, the insert with it.
WITH inserted AS (
    INSERT INTO enrolments (id, program_id, citizen_id, program_version, enrolled_at,
                            first_use_deadline)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (program_id, citizen_id) DO NOTHING
    RETURNING id, program_id, citizen_id, program_version, status, enrolled_at,
              first_use_deadline, first_used_at
), counted AS (
    INSERT INTO enrolment_counters AS n (program_id, enrolled, quota)
    SELECT program_id, 1, $7::integer FROM inserted
    ON CONFLICT (program_id) DO UPDATE SET enrolled = n.enrolled + 1, quota = excluded.quota
    RETURNING enrolled
)
SELECT i.id, i.program_id, i.citizen_id, i.program_version, i.status, i.enrolled_at,
       i.first_use_deadline, i.first_used_at, (SELECT enrolled FROM counted) AS enrolled
FROM (SELECT 1) AS one
LEFT JOIN inserted i ON true;

-- name: try_release_lock
SELECT pg_try_advisory_xact_lock($1::integer, $2::integer);

-- name: release_forfeited
-- Rights of program $1 unused by their deadline, for deadlines up to $4 (now less the grace:
-- see wallet/enrolment.py FORFEIT_GRACE), are forfeited at $2 (now), at most $3; the
-- counter gives their places back. Returns how many. "Used" is first_used_at, or any
-- payment with the program before the deadline (payments, 0003), whichever the payment
-- path records.
WITH lapsed AS (
    SELECT e.id FROM enrolments e
    WHERE e.program_id = $1 AND e.status = 'active' AND e.first_used_at IS NULL
      AND e.first_use_deadline <= $4
      AND NOT EXISTS (
          SELECT 1 FROM payments p
          WHERE p.citizen_id = e.citizen_id AND p.program_id = e.program_id
            AND p.created_at < e.first_use_deadline
      )
    ORDER BY e.first_use_deadline
    LIMIT $3
    FOR UPDATE OF e
), forfeited AS (
    UPDATE enrolments e
    SET status = 'forfeited', forfeited_at = $2
    FROM lapsed
    WHERE e.id = lapsed.id AND e.status = 'active' AND e.first_used_at IS NULL
    RETURNING e.id
), counted AS (
    UPDATE enrolment_counters
    SET enrolled = enrolled - (SELECT count(*) FROM forfeited)
    WHERE program_id = $1 AND (SELECT count(*) FROM forfeited) > 0
    RETURNING enrolled
)
SELECT count(*) FROM forfeited;

-- name: programs_with_lapsed_rights
SELECT n.program_id
FROM enrolment_counters n
WHERE EXISTS (
    SELECT 1 FROM enrolments e
    WHERE e.program_id = n.program_id AND e.status = 'active' AND e.first_used_at IS NULL
      AND e.first_use_deadline <= $1
);

-- name: citizen_programs
-- Programs open to citizens (active, paused) and the ones the citizen is enrolled in, by id.
SELECT p.id, p.code, p.status, e.id AS enrolment_id, n.enrolled
FROM programs p
LEFT JOIN enrolments e ON e.program_id = p.id AND e.citizen_id = $1
LEFT JOIN enrolment_counters n ON n.program_id = p.id
WHERE (p.status IN ('active', 'paused') OR e.id IS NOT NULL)
  AND ($2::uuid IS NULL OR p.id > $2)
ORDER BY p.id
LIMIT $3;

-- name: active_enrolments
SELECT id, program_id, status
FROM enrolments
WHERE citizen_id = $1 AND status = 'active'
ORDER BY enrolled_at, id;

-- name: subsidy_used
-- Subsidy used per program: on Bangkok day $3, in the month from $4, and in total, from the
-- very counters that enforce the caps on the payment path (subsidy_usage, 0007; refunds give
-- back to them). A row last written on another day or month has used 0 of this one.
SELECT program_id,
       CASE WHEN day = $3 THEN used_day ELSE 0 END AS today,
       CASE WHEN month = $4 THEN used_month ELSE 0 END AS this_month,
       used_total AS total
FROM subsidy_usage
WHERE citizen_id = $1 AND program_id = ANY($2::uuid[]);
