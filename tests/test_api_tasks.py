"""Huey and TaskWrapper: enqueueing, executing, results, options, hooks and bad input."""

import datetime
import pickle

import pytest

from huey import MemoryHuey
from huey.api import SerializationError
from huey.constants import EmptyData
from huey.exceptions import ConfigurationError, HueyException, TaskException
from huey.registry import Message
from huey.storage import MemoryStorage

from conftest import run_next


@pytest.fixture
def huey():
    return MemoryHuey(utc=False)


def test_calling_a_task_enqueues_it_and_the_consumer_side_runs_it(huey):
    @huey.task()
    def add(a, b):
        return a + b

    result = add(2, 3)
    assert huey.pending_count() == 1 and len(huey) == 1
    assert result() is None and not result.is_ready()
    assert run_next(huey) == 5
    assert result.is_ready() and result() == 5
    assert result() == 5  # cached once read
    assert huey.result_count() == 0  # reading pops the stored value


def test_task_names_default_to_module_and_function(huey):
    @huey.task()
    def fn():
        pass

    @huey.task(name='custom')
    def other():
        pass

    assert huey._registry.task_to_string(fn.task_class) == f'{__name__}.fn'
    assert huey._registry.task_to_string(other.task_class) == f'{__name__}.custom'
    fn()
    message = huey.serializer.deserialize(huey.storage.enqueued_items()[0])
    assert isinstance(message, Message) and message.name == f'{__name__}.fn'


def test_message_is_a_namedtuple_with_huey_fields(huey):
    assert Message._fields == (
        'id',
        'name',
        'eta',
        'retries',
        'retry_delay',
        'priority',
        'args',
        'kwargs',
        'on_complete',
        'on_error',
        'expires',
        'expires_resolved',
        'timeout',
        'chord_config',
        'retry_backoff',
    )
    assert Message.__module__ == 'huey.registry'
    old = Message('id1', 'mod.fn')  # fields added later default to None
    assert old.retry_backoff is None and old.args is None
    assert pickle.loads(pickle.dumps(old)) == old


def test_store_none_and_results_off():
    huey = MemoryHuey(store_none=True)

    @huey.task()
    def nothing():
        return None

    r = nothing()
    run_next(huey)
    assert huey.result_count() == 1 and r() is None

    quiet = MemoryHuey(results=False)

    @quiet.task()
    def value():
        return 1

    assert value() is None
    run_next(quiet)
    assert quiet.result_count() == 0


def test_immediate_mode_runs_at_call_time_and_switches_storage():
    huey = MemoryHuey(immediate=True)
    storage_before = huey.storage

    @huey.task()
    def mul(a, b):
        return a * b

    assert mul(3, 4)() == 12
    assert huey.pending_count() == 0
    huey.immediate = False
    assert huey.storage is not storage_before
    mul(1, 1)
    assert huey.pending_count() == 1
    huey.immediate = True
    assert huey.pending_count() == 0  # a fresh in-memory storage again


def test_immediate_without_memory_keeps_storage():
    huey = MemoryHuey(immediate=True, immediate_use_memory=False)
    storage = huey.storage
    huey.immediate = False
    assert huey.storage is storage


def test_call_local_and_s(huey):
    @huey.task()
    def add(a, b=0):
        return a + b

    assert add.call_local(1, b=2) == 3
    task = add.s(1, b=5, priority=3, retries=2, retry_delay=4, expires=10, timeout=7, id='my-id')
    assert task.args == (1,) and task.kwargs == {'b': 5}
    assert (
        task.priority,
        task.retries,
        task.retry_delay,
        task.expires,
        task.timeout,
        task.id,
    ) == (3, 2, 4, 10, 7, 'my-id')
    assert huey.pending_count() == 0  # .s() does not enqueue


def test_context_task_receives_the_task(huey):
    @huey.task(context=True)
    def whoami(task=None):
        return task.id

    r = whoami()
    run_next(huey)
    assert r() == r.id


def test_context_task_manager(huey):
    events = []

    class Ctx:
        def __enter__(self):
            events.append('enter')
            return 'ctx-value'

        def __exit__(self, *exc):
            events.append('exit')

    @huey.context_task(Ctx(), as_argument=True)
    def with_arg(value, n):
        return (value, n)

    @huey.context_task(Ctx())
    def without_arg(n):
        return n

    r1, r2 = with_arg(1), without_arg(2)
    run_next(huey), run_next(huey)
    assert r1() == ('ctx-value', 1) and r2() == 2
    assert events == ['enter', 'exit', 'enter', 'exit']


def test_map_enqueues_one_task_per_item(huey):
    @huey.task()
    def add(a, b=10):
        return a + b

    results = add.map([1, (2, 3), 4])
    assert len(results) == 3 and huey.pending_count() == 3
    for _ in range(3):
        run_next(huey)
    assert results.get() == [11, 5, 14]


def test_schedule_eta_and_delay_forms(huey):
    @huey.task()
    def f():
        return 'ran'

    future = datetime.datetime.now() + datetime.timedelta(seconds=60)
    r = f.schedule(eta=future)
    task = huey.dequeue()
    assert huey.execute(task) is None  # not due: goes to the schedule
    assert huey.scheduled_count() == 1 and r() is None
    assert huey.read_schedule(future - datetime.timedelta(seconds=1)) == []
    due = huey.read_schedule(future)
    assert [t.id for t in due] == [r.id]
    assert huey.execute(due[0], future) == 'ran'

    f.schedule(delay=30)
    f.schedule(args=(), delay=datetime.timedelta(seconds=30))
    f.schedule(5)  # a bare number is a delay
    assert all(t.eta is not None for t in huey.pending())
    with pytest.raises(ValueError, match='eta= or delay='):
        f.schedule(args=(1,))
    with pytest.raises(ValueError, match='kwargs'):
        f.schedule(kwargs=[1], delay=1)


def test_eta_in_utc_or_local_time():
    utc_huey, local_huey = MemoryHuey(utc=True), MemoryHuey(utc=False, name='local')
    for h in (utc_huey, local_huey):

        @h.task()
        def f():
            pass

        f.schedule(delay=3600)
    utc_eta = utc_huey.pending()[0].eta
    local_eta = local_huey.pending()[0].eta
    expected_utc = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs((utc_eta - expected_utc) - datetime.timedelta(hours=1)).total_seconds() < 60
    expected_local = datetime.datetime.now()
    assert abs((local_eta - expected_local) - datetime.timedelta(hours=1)).total_seconds() < 60
    assert utc_eta.tzinfo is None and local_eta.tzinfo is None


def test_aware_eta_is_converted(huey):
    @huey.task()
    def f():
        pass

    plus_two = datetime.timezone(datetime.timedelta(hours=2))
    utc_huey = MemoryHuey(utc=True, name='utc')
    g = utc_huey.task()(f.func)
    g.schedule(eta=datetime.datetime(2030, 1, 1, 12, tzinfo=plus_two))
    assert utc_huey.pending()[0].eta == datetime.datetime(2030, 1, 1, 10)


def test_priority_orders_the_queue(huey):
    @huey.task()
    def f(n):
        return n

    f.s(1)
    for n, p in [(1, None), (2, 5), (3, 1), (4, 5), (5, -1)]:
        huey.enqueue(f.s(n, priority=p))
    order = [huey.dequeue().args[0] for _ in range(5)]
    assert order == [2, 4, 3, 1, 5]


def test_default_priority_from_decorator(huey):
    @huey.task(priority=7)
    def f():
        pass

    f()
    assert huey.pending()[0].priority == 7


def test_expires_resolved_at_enqueue(huey):
    @huey.task(expires=10)
    def f():
        return 'ran'

    r = f()
    task = huey.dequeue()
    assert task.expires == 10 and task.expires_resolved is not None
    late = task.expires_resolved + datetime.timedelta(seconds=1)
    seen = []
    huey.signal('expired')(lambda sig, t: seen.append(t.id))
    assert huey.execute(task, late) is None
    assert seen == [r.id] and r() is None

    absolute = datetime.datetime.now() + datetime.timedelta(hours=1)
    f.schedule(delay=0, expires=datetime.timedelta(seconds=5))
    f.schedule(delay=0, expires=absolute)
    t1, t2 = huey.dequeue(), huey.dequeue()
    assert t1.expires_resolved > datetime.datetime.now()
    assert t2.expires_resolved == absolute


def test_timeouts_are_cooperative_for_in_process_execution(huey):
    @huey.task(timeout=0.01, context=True)
    def slow(task=None):
        import time

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            task.check_timeout()
        return 'never'

    @huey.task()
    def no_timeout(task=None):
        return 1

    r = slow()
    seen = []
    huey.signal('timeout')(lambda sig, t: seen.append(sig))
    run_next(huey)
    with pytest.raises(TaskException) as exc:
        r()
    assert 'TaskTimeout' in exc.value.metadata['error'] and seen == ['timeout']
    task = no_timeout.s()
    assert task.time_remaining == float('inf') and not task.is_timed_out


def test_hooks_run_and_unregister(huey):
    calls = []

    @huey.pre_execute()
    def before(task):
        calls.append(('pre', task.name))

    @huey.post_execute('after')
    def post(task, value, exc):
        calls.append(('post', value, exc))

    @huey.task()
    def f():
        return 42

    f()
    run_next(huey)
    assert calls == [('pre', 'f'), ('post', 42, None)]
    assert huey.unregister_pre_execute('before') is True
    assert huey.unregister_post_execute(post) is False  # registered as 'after'
    assert huey.unregister_post_execute('after') is True
    calls.clear()
    f()
    run_next(huey)
    assert calls == []

    @huey.on_startup()
    def up():
        pass

    @huey.on_shutdown()
    def down():
        pass

    assert huey.unregister_on_startup(up) and huey.unregister_on_shutdown('down')
    assert not huey.unregister_on_startup('up')


def test_pre_execute_errors_are_logged_not_fatal(huey, caplog):
    @huey.pre_execute()
    def broken(task):
        raise RuntimeError('hook failed')

    @huey.task()
    def f():
        return 'ok'

    r = f()
    run_next(huey)
    assert r() == 'ok' and 'hook failed' in caplog.text


def test_huey_get_put_delete(huey):
    huey.put('k', {'v': 1})
    assert huey.get('k', peek=True) == {'v': 1}
    assert huey.get('k') == {'v': 1}
    assert huey.get('k') is None
    assert huey.put_if_empty('k2', 'a') is True
    assert huey.put_if_empty('k2', 'b') is False
    assert huey.get('k2') == 'a'
    huey.put('k3', 1)
    assert huey.delete('k3') is True and huey.delete('k3') is False
    assert huey.get_raw('missing') is EmptyData


def test_introspection_and_flush(huey):
    @huey.task()
    def f(n):
        return n

    f(1)
    f.schedule((2,), delay=60)
    huey.execute(huey.dequeue())  # n=1 -> result
    huey.execute(huey.dequeue())  # n=2 -> schedule
    f(3)
    assert [t.args for t in huey.pending()] == [(3,)]
    assert [t.args for t in huey.scheduled()] == [(2,)]
    assert (huey.pending_count(), huey.scheduled_count(), huey.result_count()) == (1, 1, 1)
    assert list(huey.all_results()) == [huey.all_results().popitem()[0]]
    assert huey.pending(limit=0) == huey.pending()
    huey.flush()
    assert (huey.pending_count(), huey.scheduled_count(), huey.result_count()) == (0, 0, 0)


def test_huey_result_by_id(huey):
    @huey.task()
    def f():
        return 'x'

    r = f()
    run_next(huey)
    assert huey.result(r.id, preserve=True) == 'x'
    assert huey.result(r.id) == 'x'
    assert huey.result(r.id) is None


def test_unregister(huey):
    @huey.task()
    def f():
        pass

    assert f.unregister() is True and f.unregister() is False
    with pytest.raises(HueyException, match='not found in TaskRegistry'):
        f()


def test_create_consumer_returns_a_consumer(huey):
    from huey.consumer import Consumer

    consumer = huey.create_consumer(workers=2)
    assert isinstance(consumer, Consumer) and consumer.workers == 2


def test_default_storage_class_and_storage_kwargs():
    from huey import Huey

    huey = Huey('named', storage_class=MemoryStorage)
    assert isinstance(huey.storage, MemoryStorage) and huey.storage.name == 'named'


# -- bad input ---------------------------------------------------------------------------


def test_registering_two_tasks_with_the_same_name_fails(huey):
    @huey.task()
    def dup():
        pass

    with pytest.raises(ValueError, match='same identifier'):

        @huey.task(name='dup')
        def other():
            pass


def test_unpicklable_arguments_raise_at_the_call_site(huey):
    import threading

    @huey.task()
    def f(x):
        pass

    with pytest.raises(SerializationError, match='cannot serialize task .*f'):
        f(threading.Lock())
    with pytest.raises(TypeError):  # SerializationError is also a TypeError
        f(lambda: None)
    assert huey.pending_count() == 0


def test_unknown_signal_and_non_callables(huey):
    with pytest.raises(ValueError, match='unknown signal'):
        huey.signal('no-such-signal')(lambda *a: None)
    with pytest.raises(TypeError, match='callable'):
        huey.pre_execute()('not callable')
    with pytest.raises(TypeError, match='callable'):
        huey.on_startup()(None)
    with pytest.raises(TypeError):
        huey.task()(42)


def test_bad_delay_and_eta_types(huey):
    @huey.task()
    def f():
        pass

    with pytest.raises(TypeError, match='delay'):
        f.schedule(delay='soon')
    with pytest.raises(ValueError, match='eta'):
        f.schedule(eta='tomorrow')


def test_async_functions_are_rejected(huey):
    async def coro():
        pass

    with pytest.raises(ConfigurationError, match='async'):
        huey.task()(coro)


def test_enqueue_rejects_non_tasks(huey):
    with pytest.raises(TypeError, match='enqueue'):
        huey.enqueue('not a task')


def test_corrupt_queue_message_is_set_aside(huey, caplog):
    @huey.task()
    def f():
        return 1

    huey.storage.enqueue(b'\x00garbage')
    r = f()
    assert run_next(huey) == 1 and r() == 1
    assert 'Unable to deserialize' in caplog.text
