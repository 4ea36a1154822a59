"""The ``visionstream`` console command: one subcommand per job, each with ``--help``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from visionstream.cli.arguments import (
    add_errors_arguments,
    add_replay_arguments,
    add_report_arguments,
    add_retry_arguments,
    add_upload_arguments,
)
from visionstream.settings import Settings, SettingsError, load_settings

Handler = Callable[[argparse.Namespace, Settings], int | None]


def _stack(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.dev.stack import stack_command

    return stack_command(args.action, settings, secure=args.secure, durable_broker=args.durable_broker)


def _migrate(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.core.db import migrate

    applied = asyncio.run(migrate(settings))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'database is up to date'}")
    return 0


def _topics(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.topics import ensure_topics

    created = asyncio.run(ensure_topics(settings))
    print(f"topics ready ({settings.topic_partitions} partitions); created: {', '.join(created) or 'none'}")
    return 0


def _produce_keys(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.cli.produce import produce_keys_command

    return asyncio.run(produce_keys_command(settings, args))


def _produce_video(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.cli.produce import produce_video_command

    return asyncio.run(produce_video_command(settings, args))


def _replay(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.cli.produce import replay_command

    return asyncio.run(replay_command(settings, args))


def _report(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.cli.report import report_command

    return asyncio.run(report_command(settings, args))


def _upload(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.cli.upload import upload_command

    return upload_command(settings, args)


def _errors(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.cli.dead_letters import errors_command

    return errors_command(settings, args)


def _retry(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.cli.dead_letters import retry_command

    return retry_command(settings, args)


def _enroll(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.cli.people import enroll_command

    return enroll_command(settings, args.name, args.photos, args.backfill)


def _people(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.cli.people import people_command

    return asyncio.run(people_command(settings, args))


def _dashboard(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.dashboard.server import serve

    try:
        asyncio.run(serve(settings, lambda url: print(f"dashboard: {url}", flush=True)))
    except KeyboardInterrupt:
        pass
    return 0


def _demo(args: argparse.Namespace, settings: Settings) -> int | None:
    from visionstream.dev.demo import run_demo

    return run_demo(settings, images=args.images, keep_stack=args.keep_stack, portrait=args.enroll,
                    secure=args.secure, clip=args.clip)


def _add_people_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="enrolled people, per embedder")
    remove = actions.add_parser("remove", help="forget a person (every embedder) and their sightings")
    remove.add_argument("name")
    rename = actions.add_parser("rename", help="rename a person")
    rename.add_argument("name")
    rename.add_argument("new_name")
    clear = actions.add_parser("purge", help="delete stored face embeddings and anonymous visitor embeddings "
                               "older than their retention settings (visits stay counted)")
    clear.add_argument("--all", action="store_true", help="delete every stored face and visitor embedding")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="visionstream",
        description="Real-time and bulk computer vision over Kafka. Settings come from VISIONSTREAM_* variables.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = commands.add_parser("stack", help="start, check or stop the local Kafka/S3/PostgreSQL stack")
    stack.add_argument("action", choices=["up", "down", "status", "env"], help="what to do with the stack")
    stack.add_argument("--secure", action="store_true",
                       help="with up: TLS everywhere (a throw-away CA), Kafka over SASL_SSL with SCRAM-SHA-512, "
                       "PostgreSQL over TLS with a password, S3 over HTTPS; stack.env holds the settings")
    stack.add_argument("--durable-broker", action="store_true",
                       help="with up: Kafka keeps topics, offsets and groups in the stack's S3 (bucket tansu-broker), "
                       "so they survive a broker restart; ~13x slower to produce than in memory")
    stack.set_defaults(handler=_stack)

    migrate = commands.add_parser("migrate", help="apply the SQL migrations in order")
    migrate.set_defaults(handler=_migrate)

    topics = commands.add_parser("topics", help="create the visionstream topics with the configured partitions")
    topics.set_defaults(handler=_topics)

    produce = commands.add_parser("produce", help="stream work into Kafka")
    sources = produce.add_subparsers(dest="source", required=True, metavar="SOURCE")
    keys = sources.add_parser("keys", help="image keys from image_info or an S3 prefix into the images topic")
    keys.add_argument("--prefix", help="only keys starting with this prefix")
    origin = keys.add_mutually_exclusive_group()
    origin.add_argument("--where", help="SQL condition on image_info, e.g. \"label = 'n01440764'\"")
    origin.add_argument("--s3", action="store_true", help="list the S3 bucket (under --prefix) instead of image_info")
    keys.add_argument("--limit", type=int, help="stop after this many keys")
    keys.add_argument("--no-progress", action="store_true", help="no progress bar")
    keys.set_defaults(handler=_produce_keys)

    video = sources.add_parser("video", help="frames of video files, cameras or streams into the frames topic")
    video.add_argument("sources", nargs="+", metavar="SOURCE", help="video file, device index (0) or rtsp/http URL")
    video.add_argument("--camera-id", action="append",
                       help="camera id of each source, in order (default: file name, deviceN or the URL)")
    video.add_argument("--fps", type=float, help="frames per second to send (files: playback rate)")
    video.add_argument("--max-side", type=int, help="scale frames down to this longest side before encoding")
    video.add_argument("--jpeg-quality", type=int, default=85, choices=range(1, 101), metavar="Q",
                       help="JPEG quality 1-100 (default 85)")
    # Not --loop: importing faust takes --loop (its event-loop choice) from sys.argv and stops the process.
    video.add_argument("--repeat", action="store_true", help="play files again from the start when they end")
    pace = video.add_mutually_exclusive_group()
    pace.add_argument("--realtime", action="store_true", help="files at their frame rate, like a camera (default)")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="files as fast as they can be sent")
    video.add_argument("--limit", type=int, help="stop each source after this many frames")
    video.set_defaults(handler=_produce_video)

    # The commands whose arguments cli/arguments.py defines (their modules are heavy to import).
    for name, summary, add_arguments, handler in (
        ("replay", "send past images (or --camera: archived frames) to a replay topic, for another model version",
         add_replay_arguments, _replay),
        ("report", "tables (and --plot PNGs) of results, versions, throughput, faces", add_report_arguments, _report),
        ("upload", "bulk load image folders and tar archives into S3 and image_info", add_upload_arguments, _upload),
        ("errors", "list messages that could not be processed, newest first", add_errors_arguments, _errors),
        ("retry", "send dead-lettered image messages back to the images topic", add_retry_arguments, _retry),
    ):
        command = commands.add_parser(name, help=summary)
        add_arguments(command)
        command.set_defaults(handler=handler)

    enroll = commands.add_parser("enroll", help="store a person's face embedding for identification")
    enroll.add_argument("name", help="the person's name (identified faces are keyed by it)")
    enroll.add_argument("photos", nargs="+", type=Path, metavar="PHOTO", help="photos showing the person's face")
    enroll.add_argument("--backfill", action="store_true",
                        help="also find the person in the stored face embeddings (VISIONSTREAM_STORE_FACE_EMBEDDINGS)")
    enroll.set_defaults(handler=_enroll)

    people = commands.add_parser("people", help="list, remove or rename enrolled people; purge stored embeddings")
    _add_people_arguments(people)
    people.set_defaults(handler=_people)

    dashboard = commands.add_parser(
        "dashboard", help="serve the live dashboard page (VISIONSTREAM_DASHBOARD_HOST/_PORT, default 127.0.0.1:6080)")
    dashboard.set_defaults(handler=_dashboard)

    demo = commands.add_parser("demo", help="the whole pipeline on the local stack, ending with a SQL summary")
    demo.add_argument("--images", type=int, default=240, help="number of sample images (default 240)")
    demo.add_argument("--keep-stack", action="store_true", help="leave the stack running afterwards")
    demo.add_argument("--secure", action="store_true",
                      help="on the secure local stack (stack up --secure): Kafka SASL_SSL, PostgreSQL and S3 over TLS")
    demo.add_argument("--enroll", type=Path, metavar="PHOTO",
                      help="enrol the person of this portrait (named after its folder) and identify them in a frame")
    demo.add_argument("--clip", type=Path, metavar="VIDEO",
                      help="play this video as the demo camera's frames and count its distinct visitors")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    handler: Handler = args.handler
    return int(handler(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
