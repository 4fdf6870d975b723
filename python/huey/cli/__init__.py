"""The ``huey`` command: see and steer a queue from the shell.

    huey info APP                       overview: queue, schedule, results, in flight,
                                        dead letters, consumers, periodic tasks
    huey pending|scheduled|results|inflight APP [--limit N]
    huey dlq list|show ID|requeue ID...|requeue --all|purge APP
    huey revoke APP ID... | --name TASK [--once] [--restore]
    huey flush APP [--yes]
    huey enqueue APP TASK [ARGS as JSON] [--kwargs JSON] [--delay S | --eta ISO] [--priority N]
    huey dashboard APP [--bind HOST:PORT] [--token TOKEN]

APP is the import path of the Huey instance, as for ``huey_consumer``. Read commands take
``--json`` (the schema is ``huey/cli/schema.json``) and never change the storage; flush and
purge ask first unless ``--yes``. Exit status: 0 done, 1 nothing found or declined, 2 bad
usage, 3 the app could not be loaded, 4 the storage could not be read or written.
"""

import argparse
import datetime
import json
import os
import sys
import time

from huey.cli import render

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_APP = 3
EXIT_STORAGE = 4
DEFAULT_LIMIT = 100


class CommandError(Exception):
    """Reported as one line on stderr, exiting with ``code``."""

    def __init__(self, message, code=EXIT_USAGE):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CommandError(f'{message} (see: {self.prog} --help)', EXIT_USAGE)


def _limit(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'--limit must be a whole number, got {text!r}') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'--limit must be 0 or more, got {value}')
    return value


def build_parser():
    parser = _Parser(prog='huey', description='See and steer a huey queue.')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)
    commands.required = True

    def command(name, help_text, listing=False, json_output=True):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument('app', metavar='APP', help='import path of the Huey, e.g. app.tasks.huey')
        if json_output:
            sub.add_argument(
                '--json', action='store_true', help='print JSON (huey/cli/schema.json)'
            )
        if listing:
            sub.add_argument(
                '--limit',
                type=_limit,
                default=DEFAULT_LIMIT,
                metavar='N',
                help=f'list at most N (default {DEFAULT_LIMIT})',
            )
        return sub

    command('info', 'overview of the queue, its consumers and periodic tasks')
    command('pending', 'queued tasks, in the order they will run', listing=True)
    command('scheduled', 'tasks waiting for their eta, soonest first', listing=True)
    command('results', 'the result store: results, errors, revocations, locks', listing=True)
    command('inflight', 'tasks being run (reliable mode), with lease ages', listing=True)

    dlq = commands.add_parser('dlq', help='the dead-letter queue', description='dead letters')
    actions = dlq.add_subparsers(dest='action', metavar='ACTION', parser_class=_Parser)
    actions.required = True
    for name, help_text in (
        ('list', 'list dead letters, oldest first'),
        ('show', 'one dead letter in full'),
        ('requeue', 'put dead letters back on the queue'),
        ('purge', 'delete every dead letter'),
    ):
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument('app', metavar='APP', help='import path of the Huey')
        if name == 'list':
            sub.add_argument('--json', action='store_true', help='print JSON')
            sub.add_argument('--limit', type=_limit, default=DEFAULT_LIMIT, metavar='N')
        elif name == 'show':
            sub.add_argument('id', metavar='ID')
            sub.add_argument('--json', action='store_true', help='print JSON')
        elif name == 'requeue':
            sub.add_argument('ids', metavar='ID', nargs='*')
            sub.add_argument('--all', action='store_true', help='requeue every dead letter')
        else:
            sub.add_argument('--yes', action='store_true', help='do not ask')

    revoke = command('revoke', 'revoke tasks by id, or every task of one name', json_output=False)
    revoke.add_argument('ids', metavar='ID', nargs='*', help='task ids')
    revoke.add_argument('--name', metavar='TASK', help='revoke every task named TASK')
    revoke.add_argument('--once', action='store_true', help='skip only the next run')
    revoke.add_argument('--restore', action='store_true', help='undo a revocation instead')

    flush = command('flush', 'empty the queue, schedule, results and counters', json_output=False)
    flush.add_argument('--yes', action='store_true', help='do not ask')

    enqueue = command('enqueue', 'enqueue a task by name')
    enqueue.add_argument('task', metavar='TASK', help='task name (module.function or function)')
    enqueue.add_argument(
        'arguments',
        metavar='ARGS',
        nargs='?',
        help='JSON array of arguments (or object of kwargs)',
    )
    enqueue.add_argument('--kwargs', metavar='JSON', help='JSON object of keyword arguments')
    when = enqueue.add_mutually_exclusive_group()
    when.add_argument('--delay', type=float, metavar='SECONDS', help='run after SECONDS')
    when.add_argument('--eta', metavar='ISO', help='run at this time (ISO 8601)')
    enqueue.add_argument('--priority', type=int, metavar='N')
    enqueue.add_argument('--retries', type=int, metavar='N')

    dashboard = command('dashboard', 'serve the web dashboard', json_output=False)
    dashboard.add_argument(
        '--bind', default='127.0.0.1:8080', metavar='HOST:PORT', help='default 127.0.0.1:8080'
    )
    dashboard.add_argument(
        '--token',
        metavar='TOKEN',
        help='access token, required when not bound to localhost (or $HUEY_DASHBOARD_TOKEN)',
    )
    return parser


def load_app(path):
    from huey.api import Huey
    from huey.bin.huey_consumer import load_huey

    try:
        huey = load_huey(path)
    except Exception as exc:
        raise CommandError(
            f'cannot load app {path!r}: {type(exc).__name__}: {exc}', EXIT_APP
        ) from None
    if not isinstance(huey, Huey):
        raise CommandError(
            f'{path} is a {type(huey).__name__}, not a Huey instance', EXIT_APP
        ) from None
    return huey


def confirm(question, yes):
    if yes:
        return True
    if not sys.stdin.isatty():
        raise CommandError(f'{question}: refusing without --yes (stdin is not a terminal)')
    sys.stderr.write(f'{question} [y/N] ')
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ('y', 'yes')


def find_task(huey, name):
    """The task class registered as ``name``, or as ``*.name`` when only one matches."""
    registry = huey._registry._registry
    if name in registry:
        return registry[name]
    matches = [key for key in registry if key.rsplit('.', 1)[-1] == name]
    if len(matches) == 1:
        return registry[matches[0]]
    known = ', '.join(sorted(registry)) or 'none'
    if matches:
        raise CommandError(f'task name {name!r} is ambiguous: {", ".join(sorted(matches))}')
    raise CommandError(f'no task named {name!r} (known: {known})', EXIT_NOT_FOUND)


def _json_value(text, what):
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CommandError(f'{what} is not valid JSON: {exc}') from None


def output(args, data, text):
    if getattr(args, 'json', False):
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text(data))


# -- commands ---------------------------------------------------------------------------


def cmd_info(huey, args):
    from huey import status

    output(args, status.info(huey, time.time()), render.info)


def _listing(name):
    def run(huey, args):
        from huey import status

        if name == 'inflight':
            data = status.inflight(huey, time.time(), args.limit)
        else:
            data = getattr(status, name)(huey, args.limit)
        output(args, data, getattr(render, name))

    return run


def cmd_dlq(huey, args):
    from huey import status

    if args.action == 'list':
        output(args, status.dead_letters(huey, args.limit), render.dead_letters)
    elif args.action == 'show':
        letter = status.dead_letter(huey, args.id)
        if letter is None:
            raise CommandError(f'no dead letter {args.id!r}', EXIT_NOT_FOUND)
        output(args, letter, render.dead_letter)
    elif args.action == 'requeue':
        if args.all == bool(args.ids):
            raise CommandError('dlq requeue takes letter ids or --all (not both)')
        ids = [letter['id'] for letter in huey.dead_letters()] if args.all else args.ids
        missing = [id for id in ids if not huey.requeue_dead_letter(id)]
        done = len(ids) - len(missing)
        print(f'requeued {done} dead letter{"s" if done != 1 else ""}')
        if missing:
            raise CommandError(f'no dead letter {", ".join(map(repr, missing))}', EXIT_NOT_FOUND)
    else:
        count = huey.dead_letter_count()
        if not confirm(f'Delete {count} dead letter(s) of queue {huey.name!r}?', args.yes):
            raise CommandError('not purged', EXIT_NOT_FOUND)
        print(f'purged {huey.purge_dead_letters()} dead letter(s)')


def cmd_revoke(huey, args):
    if bool(args.name) == bool(args.ids):
        raise CommandError('revoke takes task ids or --name TASK (one of them)')
    if args.name:
        task_class = find_task(huey, args.name)
        if args.restore:
            restored = huey.restore_all(task_class)
            print(f'{args.name}: {"restored" if restored else "was not revoked"}')
        else:
            huey.revoke_all(task_class, revoke_once=args.once)
            print(f'revoked every {args.name} task{" (once)" if args.once else ""}')
        return
    for id in args.ids:
        if args.restore:
            restored = huey.restore_by_id(id)
            print(f'{id}: {"restored" if restored else "was not revoked"}')
        else:
            huey.revoke_by_id(id, revoke_once=args.once)
            print(f'{id}: revoked{" (once)" if args.once else ""}')


def cmd_flush(huey, args):
    question = (
        f'Flush queue {huey.name!r}: {huey.pending_count()} pending, '
        f'{huey.scheduled_count()} scheduled, {huey.result_count()} results and all '
        f'counters (dead letters stay)?'
    )
    if not confirm(question, args.yes):
        raise CommandError('not flushed', EXIT_NOT_FOUND)
    huey.flush()
    print(f'flushed queue {huey.name!r}')


def cmd_enqueue(huey, args):
    from huey.utils import normalize_time

    task_class = find_task(huey, args.task)
    call_args, kwargs = (), {}
    if args.arguments is not None:
        value = _json_value(args.arguments, 'ARGS')
        if isinstance(value, list):
            call_args = tuple(value)
        elif isinstance(value, dict):
            kwargs = value
        else:
            raise CommandError(f'ARGS must be a JSON array or object, got {args.arguments!r}')
    if args.kwargs is not None:
        value = _json_value(args.kwargs, '--kwargs')
        if not isinstance(value, dict):
            raise CommandError(f'--kwargs must be a JSON object, got {args.kwargs!r}')
        kwargs.update(value)
    eta = None
    if args.delay is not None:
        eta = normalize_time(delay=args.delay, utc=huey.utc)
    elif args.eta is not None:
        try:
            when = datetime.datetime.fromisoformat(args.eta)
        except ValueError:
            raise CommandError(f'--eta must be an ISO 8601 time, got {args.eta!r}') from None
        eta = normalize_time(eta=when, utc=huey.utc)
    task = task_class(call_args, kwargs, eta=eta, priority=args.priority, retries=args.retries)
    huey.enqueue(task)
    name = huey._registry._names.get(task_class, args.task)
    data = {
        'command': 'enqueue',
        'version': 1,
        'queue': huey.name,
        'id': task.id,
        'name': name,
        'eta': None if eta is None else eta.isoformat(),
    }
    output(args, data, render.enqueued)


def cmd_dashboard(huey, args):
    from huey.dashboard import serve
    from huey.metrics import parse_bind

    try:
        host, port = parse_bind(args.bind, '--bind')
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    token = args.token or os.environ.get('HUEY_DASHBOARD_TOKEN') or None
    try:
        server = serve(huey, (host, port), token=token)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f'cannot listen on {args.bind}: {exc}') from None
    print(f'huey dashboard for {huey.name!r} at {server.url}', flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


COMMANDS = {
    'info': cmd_info,
    'pending': _listing('pending'),
    'scheduled': _listing('scheduled'),
    'results': _listing('results'),
    'inflight': _listing('inflight'),
    'dlq': cmd_dlq,
    'revoke': cmd_revoke,
    'flush': cmd_flush,
    'enqueue': cmd_enqueue,
    'dashboard': cmd_dashboard,
}


def run(argv=None):
    """Run one command; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
        huey = load_app(args.app)
        try:
            COMMANDS[args.command](huey, args)
        except CommandError:
            raise
        except Exception as exc:
            storage = type(huey.storage).__name__
            raise CommandError(
                f'storage error ({storage}): {type(exc).__name__}: {exc}', EXIT_STORAGE
            ) from None
    except CommandError as exc:
        sys.stderr.write(f'huey: error: {exc}\n')
        return exc.code
    return EXIT_OK


def main():
    sys.exit(run())
