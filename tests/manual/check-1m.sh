#!/bin/bash
# The check at 1M by hand (not run by CI: it takes about 4 minutes). Runs the CLI as a user does on
# 1,000,000 reference customers with rules.example.yaml and prints what to compare: the dry-run
# listing against the backfill's history, a second sweep that changes nothing, a kill -9 and
# --resume against an uninterrupted run (checksums), and a sweep a month later.
# Needs `npm run build`, Postgres at 127.0.0.1:5432 (trust, user postgres); creates and leaves the
# databases c1m and c1m_kill.
set -u
cd "$(dirname "$0")/../.."

S="node bin/suspend"
A="--as-of 2026-11-23 --rules rules.example.yaml"
P="psql -h 127.0.0.1 -U postgres -Atq"
$P -c "drop database if exists c1m" -c "drop database if exists c1m_kill" -c "create database c1m"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/c1m
echo "== seed";       /usr/bin/time -f "%e s, peak RSS %M KB" $S seed --customers 1000000 --quiet
echo "== migrate";    $S migrate --quiet
$P -c "create database c1m_kill template c1m"
echo "== report --dry-run --accounts"; /usr/bin/time -f "%e s, peak RSS %M KB" $S report --dry-run $A --accounts --format csv --output /tmp/c1m-report.csv
echo "report lines: $(($(wc -l < /tmp/c1m-report.csv) - 1))"
echo "== backfill";   /usr/bin/time -f "%e s, peak RSS %M KB" $S backfill $A --max-changes none --no-notify --format json --output /tmp/c1m-backfill.json; echo "exit $?"
node -e 'const r=require("/tmp/c1m-backfill.json");console.log(JSON.stringify({status:r.status,counts:{scanned:r.counts.scanned,changes:r.counts.changes,accountsChanged:r.counts.accountsChanged,changedSinceRead:r.counts.changedSinceRead,skipped:r.counts.skipped}}))'
# Report list vs what the backfill wrote (key, policy, change, from, to).
tail -n +2 /tmp/c1m-report.csv | cut -d, -f1,3,4,5,6 | sort > /tmp/c1m-report.keys
$P -d c1m -F, -c "select customer_key, policy, kind, coalesce(from_stage,'clear'), coalesce(to_stage,'clear') from suspend.history" | sort > /tmp/c1m-history.keys
echo "report rows $(wc -l < /tmp/c1m-report.keys), history rows $(wc -l < /tmp/c1m-history.keys), differing lines: $(comm -3 /tmp/c1m-report.keys /tmp/c1m-history.keys | wc -l)"
echo "== sweep, same as-of (nothing to change)"; /usr/bin/time -f "%e s, peak RSS %M KB" $S sweep $A --no-notify --format json --output /tmp/c1m-sweep.json; echo "exit $?"
node -e 'const r=require("/tmp/c1m-sweep.json");console.log("second run changes:", r.counts.changes, "scanned:", r.counts.scanned)'
echo "== kill -9 a backfill, then --resume"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/c1m_kill
$S backfill $A --max-changes none --no-notify --quiet & pid=$!
sleep 12; kill -9 $pid; wait $pid 2>/dev/null
echo "killed after 12 s; ledger: $($P -d c1m_kill -c "select kind||' '||status from suspend.runs")"
echo "pages committed: $($P -d c1m_kill -c "select pages from suspend.checkpoints")"
$S backfill $A --max-changes none --no-notify --quiet; echo "plain backfill refused: exit $?"
/usr/bin/time -f "%e s, peak RSS %M KB" $S backfill --resume $A --max-changes none --no-notify --quiet; echo "resume exit $?"
echo "ledger: $($P -d c1m_kill -c "select kind||' '||status from suspend.runs")"
sum() { $P -d $1 -c "select md5(string_agg(x, '|' order by x)) from (
  select customer_key||policy||coalesce(stage,'')||stage_index||blocks_booking||coalesce(message,'')||reasons::text as x from suspend.account_states
  union all select 'h'||customer_key||policy||kind||coalesce(from_stage,'')||coalesce(to_stage,'')||reasons::text from suspend.history
  union all select 'o'||customer_key||event||(payload - 'runId')::text from suspend.outbox
  union all select 'c'||id||status from customers) t"; }
echo "checksum uninterrupted: $(sum c1m)"
echo "checksum killed+resumed: $(sum c1m_kill)"
echo "duplicate history rows after resume: $($P -d c1m_kill -c "select count(*) from (select customer_key, policy from suspend.history group by 1,2 having count(*) > 1) d")"
echo "== sweep a month later"; export DATABASE_URL=postgres://postgres@127.0.0.1:5432/c1m
/usr/bin/time -f "%e s, peak RSS %M KB" $S sweep --as-of 2026-12-23 --rules rules.example.yaml --max-changes none --no-notify --format json --output /tmp/c1m-sweep2.json; echo "exit $?"
node -e 'const r=require("/tmp/c1m-sweep2.json");console.log(JSON.stringify({status:r.status,changes:r.counts.changes,transitions:r.transitions.length}))'
$S runs
