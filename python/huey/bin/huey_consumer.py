"""The ``huey_consumer`` command: ``huey_consumer [options] path.to.huey_instance``."""

import logging
import os
import sys
import traceback

from huey.consumer_options import ConsumerConfig, OptionParserHandler


def err(message):
    sys.stderr.write(f'\033[91m{message}\033[0m\n')


def load_huey(path):
    """Import ``package.module.attribute``, looking in the current directory too."""
    module_name, _, attribute = path.rpartition('.')
    if not module_name:
        raise ImportError(f'{path!r} is not an import path like app.tasks.huey')
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    __import__(module_name)
    try:
        return getattr(sys.modules[module_name], attribute)
    except AttributeError:
        raise ImportError(f'module {module_name!r} has no attribute {attribute!r}') from None


def import_traceback(exc):
    """The traceback of an exception raised while importing the user's module, from the
    first frame outside this file (the user's code, then anything it called), or '' when no
    such frame exists (a mistyped path: the one-line message says it all)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if tb is None:
        return ''
    return ''.join(traceback.format_exception(type(exc), exc, tb))


def consumer_main(argv=None):
    from huey.api import Huey

    parser = OptionParserHandler().get_option_parser()
    options, args = parser.parse_args(argv)
    if len(args) != 1:
        err(
            'Error:   missing import path to `Huey` instance'
            if not args
            else f'Error:   expected one import path, got {len(args)}: {" ".join(args)}'
        )
        err('Example: huey_consumer app.queue.huey_instance')
        return 1
    config = ConsumerConfig(**{k: v for k, v in vars(options).items() if v is not None})
    try:
        config.validate()
    except ValueError as exc:
        err(f'Error:   {exc}')
        return 1
    try:
        huey_instance = load_huey(args[0])
    except Exception as exc:
        err(f'Error importing {args[0]}: {type(exc).__name__}: {exc}')
        sys.stderr.write(import_traceback(exc))
        return 1
    if not isinstance(huey_instance, Huey):
        err(f'Error:   {args[0]} is a {type(huey_instance).__name__}, not a Huey instance')
        return 1
    config.setup_logger(logging.getLogger('huey'))
    try:
        consumer = huey_instance.create_consumer(**config.values)
    except Exception as exc:
        err(f'Error:   {exc}')
        return 1
    consumer.run()
    return 0


def main():
    sys.exit(consumer_main())


if __name__ == '__main__':
    main()
