"""The ``huey_consumer`` command."""

import sys


def main(argv=None):
    sys.stderr.write('huey_consumer: the consumer is not yet available in this build of '
                     'huey-rs\n')
    return 1


if __name__ == '__main__':
    sys.exit(main())
