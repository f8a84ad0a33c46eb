-- 0007: how much subsidy each citizen has used of each program, by period (issue 5).
--
-- One row per (citizen, program), read and written only inside ledger batches that hold the
-- citizen's wallet account locked (the payment computation and refunds), so the caps are
-- exact under any concurrency. A period rolls over lazily: a row whose `day` (Asia/Bangkok)
-- is not today counts as 0 used today; likewise `month`.
CREATE TABLE subsidy_usage (
    citizen_id uuid NOT NULL,
    program_id uuid NOT NULL,
    day date NOT NULL,
    used_day bigint NOT NULL CHECK (used_day >= 0),
    month date NOT NULL CHECK (extract(day FROM month) = 1),
    used_month bigint NOT NULL CHECK (used_month >= 0),
    used_total bigint NOT NULL CHECK (used_total >= 0),
    payments integer NOT NULL DEFAULT 0 CHECK (payments >= 0),
    first_used_at timestamptz,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (citizen_id, program_id),
    CONSTRAINT subsidy_usage_periods CHECK (used_day <= used_month AND used_month <= used_total)
);
