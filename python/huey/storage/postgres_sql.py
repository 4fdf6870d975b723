"""PostgresStorage's SQL text: the schema (huey 3.5.4's tables and huey-rs's own) and
every named statement it runs, as functions of the table prefix. Nothing here touches a
connection; see ``huey.storage.postgres`` for what the tables hold.
"""

# Server time as unix seconds (double precision): leases are set and compared with it.
NOW = 'extract(epoch from clock_timestamp())::float8'


def huey_ddl(p):
    """huey 3.5.4's tables and indexes for prefix ``p`` (created by ``initialize_schema``)."""
    return [
        f'create table if not exists {p}_kv (queue text not null, key text not null, '
        'value bytea not null, primary key(queue, key))',
        f'create table if not exists {p}_schedule (id bigserial primary key, '
        'queue text not null, data bytea not null, timestamp double precision not null)',
        f'create index if not exists {p}_schedule_queue_timestamp '
        f'on {p}_schedule (queue, timestamp)',
        f'create table if not exists {p}_task (id bigserial primary key, '
        'queue text not null, data bytea not null, '
        'priority double precision not null default 0.0)',
        f'create index if not exists {p}_task_queue_priority_id '
        f'on {p}_task (queue, priority desc, id)',
        f'create table if not exists {p}_counter (queue text not null, key text not null, '
        'value bigint not null default 0, primary key(queue, key))',
    ]


def own_ddl(p):
    """huey-rs's dead-letter and reliable-delivery tables, created on first use."""
    return [
        f'create table if not exists {p}_rs_dead_letter (id bigserial primary key, '
        'queue text not null, data bytea not null, reason bytea not null, '
        'time double precision not null, deliveries integer not null default 1)',
        f'create index if not exists {p}_rs_dead_letter_queue_id '
        f'on {p}_rs_dead_letter (queue, id)',
        f'create table if not exists {p}_rs_inflight (token text primary key, '
        'queue text not null, consumer text not null, data bytea not null, '
        'priority double precision not null default 0.0, deliveries integer not null, '
        'lease_until double precision not null)',
        f'create index if not exists {p}_rs_inflight_queue_lease '
        f'on {p}_rs_inflight (queue, lease_until)',
        f'create table if not exists {p}_rs_redelivery (queue text not null, '
        'task_id bigint not null, data bytea not null, deliveries integer not null, '
        'primary key (queue, task_id))',
        f'create table if not exists {p}_rs_heartbeat (queue text not null, '
        'consumer text not null, data bytea not null, primary key (queue, consumer))',
    ]


def statements(p):
    """The statements PostgresStorage runs by name (``self._sql``) for prefix ``p``."""
    t, s, kv = f'{p}_task', f'{p}_schedule', f'{p}_kv'
    counter, dead = f'{p}_counter', f'{p}_rs_dead_letter'
    inflight, redelivery = f'{p}_rs_inflight', f'{p}_rs_redelivery'
    pop_next = (
        f'delete from {t} where id = (select id from {t} where queue = %(queue)s '
        'order by priority desc, id limit 1 for update skip locked) '
        'returning id, data, priority'
    )
    fence = (
        f'with fence as (update {inflight} set lease_until = {NOW} + %(lease)s '
        'where queue = %(queue)s and token = %(token)s returning 1)'
    )
    fenced_put = (
        f'insert into {kv} (queue, key, value) select %(queue)s, %(key)s, %(value)s '
        'where exists (select 1 from fence) '
        'on conflict (queue, key) do update set value = excluded.value'
    )
    return {
        'enqueue': (
            f'with added as (insert into {t} (queue, data, priority) values (%s, %s, %s) '
            "returning 1) select pg_notify(%s, '') from added"
        ),
        'enqueue_many': (
            f'with added as (insert into {t} (queue, data, priority) '
            'select %s, item.data, item.priority from unnest(%s::bytea[], %s::float8[]) '
            'with ordinality as item(data, priority, n) order by item.n returning 1) '
            "select pg_notify(%s, '') from (select 1 from added limit 1) as any_added"
        ),
        # The next n messages; RETURNING's order is unspecified, hence priority and id. The
        # ids come from an array built once (an InitPlan): an ``id in (select ... limit n
        # for update skip locked)`` join can run its subquery again under concurrent
        # deletes and take more than n.
        'dequeue': (
            f'delete from {t} where id = any(array(select id from {t} where queue = %s '
            'order by priority desc, id limit %s for update skip locked)) '
            'returning priority, id, data'
        ),
        # Reliable: queue -> in flight in one statement, with the deliveries charged
        # so far (remembered for a message recovery put back); this one is charged by
        # mark_started, when its task starts.
        'dequeue_reliable': (
            f'with task as ({pop_next}), '
            f'before as (delete from {redelivery} r using task where r.queue = %(queue)s '
            'and r.task_id = task.id and r.data = task.data returning r.deliveries), '
            f'held as (insert into {inflight} (token, queue, consumer, data, priority, '
            'deliveries, lease_until) select %(token)s, %(queue)s, %(consumer)s, '
            'task.data, task.priority, coalesce((select max(deliveries) from before), 0), '
            f'{NOW} + %(lease)s from task returning data, deliveries) '
            'select data, deliveries + 1 from held'
        ),
        'mark_started': (
            f'update {inflight} set deliveries = deliveries + 1 where queue = %s and token = %s'
        ),
        # The start charged and the flags read in one statement: one row, more when several
        # flags are set; the first column says whether the entry was still in flight.
        'start_and_peek': (
            f'with started as (update {inflight} set deliveries = deliveries + 1 '
            'where queue = %(queue)s and token = %(token)s returning 1) '
            'select (select count(*) from started), flag.key, flag.value '
            f'from (values (1)) as one (x) left join {kv} flag '
            'on flag.queue = %(queue)s and flag.key = any(%(keys)s)'
        ),
        'queue_size': f'select count(*) from {t} where queue = %s',
        'enqueued_items': (
            f'select data from {t} where queue = %s order by priority desc, id limit %s'
        ),
        'flush_queue': f'delete from {t} where queue = %s',
        'add_to_schedule': f'insert into {s} (queue, data, timestamp) values (%s, %s, %s)',
        'read_schedule': (
            f'delete from {s} where id in (select id from {s} where queue = %s and '
            'timestamp <= %s for update skip locked) returning timestamp, id, data'
        ),
        'move_due': (
            f'insert into {t} (queue, data, priority) select %s, item.data, '
            'item.priority from unnest(%s::bytea[], %s::float8[]) with ordinality '
            'as item(data, priority, n) order by item.n'
        ),
        'notify': "select pg_notify(%s, '')",
        'schedule_size': f'select count(*) from {s} where queue = %s',
        'scheduled_items': (
            f'select data from {s} where queue = %s order by timestamp, id limit %s'
        ),
        'flush_schedule': f'delete from {s} where queue = %s',
        'put_data': (
            f'insert into {kv} (queue, key, value) values (%s, %s, %s) '
            'on conflict (queue, key) do update set value = excluded.value'
        ),
        'delete_and_put': (
            f'with gone as (delete from {kv} where queue = %s and key = %s) '
            f'insert into {kv} (queue, key, value) values (%s, %s, %s) '
            'on conflict (queue, key) do update set value = excluded.value'
        ),
        'peek_data': f'select value from {kv} where queue = %s and key = %s',
        'peek_many': f'select key, value from {kv} where queue = %s and key = any(%s)',
        'pop_data': f'delete from {kv} where queue = %s and key = %s returning value',
        'delete_data': f'delete from {kv} where queue = %s and key = %s',
        'has_data': f'select 1 from {kv} where queue = %s and key = %s',
        'put_if_empty': (
            f'insert into {kv} (queue, key, value) values (%s, %s, %s) '
            'on conflict (queue, key) do nothing'
        ),
        'result_store_size': f'select count(*) from {kv} where queue = %s',
        'result_items': f'select key, value from {kv} where queue = %s',
        'flush_results': f'delete from {kv} where queue = %s',
        'incr': (
            f'insert into {counter} as c (queue, key, value) values (%s, %s, %s) '
            'on conflict (queue, key) do update set value = c.value + excluded.value '
            'returning value'
        ),
        'delete_counter': f'delete from {counter} where queue = %s and key = %s',
        'flush_counters': f'delete from {counter} where queue = %s',
        'put_dead_letter': (
            f'insert into {dead} (queue, data, reason, time, deliveries) '
            'values (%s, %s, %s, %s, %s) returning id'
        ),
        'dead_letters': (
            f'select id, data, reason, time, deliveries from {dead} where queue = %s '
            'order by id limit %s'
        ),
        'pop_dead_letter': (
            f'delete from {dead} where queue = %s and id = %s '
            'returning id, data, reason, time, deliveries'
        ),
        'flush_dead_letters': f'delete from {dead} where queue = %s',
        'dead_letter_count': f'select count(*) from {dead} where queue = %s',
        'renew_leases': (
            f'update {inflight} set lease_until = {NOW} + %s where queue = %s and token = any(%s)'
        ),
        # The fence and the result write in one statement (renew_delete_and_put): the
        # delete and the upsert happen only when the lease was still there to renew.
        'renew_delete_and_put': (
            f'{fence}, gone as (delete from {kv} where queue = %(queue)s '
            'and key = %(delete_key)s and exists (select 1 from fence)), '
            f'put as ({fenced_put}) select count(*) from fence'
        ),
        'renew_and_put': f'{fence}, put as ({fenced_put}) select count(*) from fence',
        'renew_and_delete': (
            f'{fence}, gone as (delete from {kv} where queue = %(queue)s '
            'and key = %(delete_key)s and exists (select 1 from fence)) '
            'select count(*) from fence'
        ),
        'ack': f'delete from {inflight} where queue = %s and token = %s',
        'expired': (
            f'delete from {inflight} where token in (select token from {inflight} '
            f'where queue = %s and lease_until < coalesce(%s, {NOW}) '
            'for update skip locked) returning data, priority, deliveries'
        ),
        'requeue': (
            f'with task as (insert into {t} (queue, data, priority) values '
            '(%(queue)s, %(data)s, %(priority)s) returning id) '
            f'insert into {redelivery} (queue, task_id, data, deliveries) '
            'select %(queue)s, task.id, %(data)s, %(deliveries)s from task'
        ),
        'inflight_items': (
            f'select token, consumer, deliveries, lease_until, data from {inflight} '
            'where queue = %s order by lease_until'
        ),
    }
