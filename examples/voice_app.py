"""An app that speaks through its VoiceLane sidecar: a reply's audio saved as it streams in.

Runs with Python's standard library alone, in any container the sidecar was injected beside
(the webhook sets VOICELANE_URL there):

    python voice_app.py "Hej! Kan du ringa mig efter lunch?" --source chat --out reply.wav
    python voice_app.py "Your build finished." --source notification --text-only

It prints when the first audio byte arrived and which tier answered. A refusal (the lane is
full, rate-limited, or the node under pressure) is printed with the sidecar's error code and
the seconds to wait before trying again, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8787"  # the lane's policy.server.listen, as the sidecar serves it


def post(url: str, body: dict[str, object], *, timeout_s: float) -> urllib.request.addinfourl:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    return urllib.request.urlopen(request, timeout=timeout_s)


def refusal(error: urllib.error.HTTPError) -> str:
    """The sidecar's structured error, `{"error": {"code", "message"}}`, as one line."""
    try:
        detail = json.loads(error.read())["error"]
        reason = f"{detail['code']}: {detail['message']}"
    except (ValueError, KeyError, TypeError):
        reason = error.reason
    retry_after = error.headers.get("Retry-After")
    return f"refused ({error.code}) {reason}" + (f"; retry after {retry_after} s" if retry_after else "")


def speak(base_url: str, text: str, source: str, out: str, timeout_s: float) -> int:
    sent = time.monotonic()
    first_audio_s = None
    size = 0
    with post(f"{base_url}/v1/speak", {"text": text, "source": source}, timeout_s=timeout_s) as response:
        tier = response.headers.get("X-Voicelane-Tier")
        with open(out, "wb") as wav:
            # A WAV begins with its 44-byte header; the first byte after it is the first audio.
            while chunk := response.read1(65536):
                wav.write(chunk)
                size += len(chunk)
                if first_audio_s is None and size > 44:
                    first_audio_s = time.monotonic() - sent
    if first_audio_s is None:
        print(f"no audio came from the {tier} tier; {size} bytes in {out}")
        return 1
    print(f"first audio after {first_audio_s:.3f} s from the {tier} tier; {size} bytes in {out}")
    return 0


def rewrite(base_url: str, text: str, source: str, timeout_s: float) -> int:
    with post(f"{base_url}/v1/text", {"text": text, "source": source}, timeout_s=timeout_s) as response:
        answer = json.loads(response.read())
    print(f"{answer['tier']}: {answer['text']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("text", help="What to say.")
    parser.add_argument("--source", default="chat", help="The request class: chat, notification, email, ...")
    parser.add_argument("--out", default="reply.wav", help="Where the audio goes (WAV).")
    parser.add_argument("--text-only", action="store_true", help="Only the spoken-style text, no audio.")
    parser.add_argument("--timeout", type=float, default=30.0, help="Seconds to wait for the whole answer.")
    args = parser.parse_args(argv)
    base_url = os.environ.get("VOICELANE_URL", DEFAULT_URL).rstrip("/")
    try:
        if args.text_only:
            return rewrite(base_url, args.text, args.source, args.timeout)
        return speak(base_url, args.text, args.source, args.out, args.timeout)
    except urllib.error.HTTPError as error:
        print(refusal(error), file=sys.stderr)
        return 1
    except (urllib.error.URLError, TimeoutError) as error:
        print(f"the sidecar at {base_url} did not answer: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
