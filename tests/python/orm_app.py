"""A Flask + SQLAlchemy ORM app with an N+1 endpoint and its fix, instrumented by the real OpenTelemetry
Flask and SQLAlchemy instrumentations, exporting spans over OTLP/HTTP to vitals.

python orm_app.py --pg URL --endpoint http://127.0.0.1:PORT --lazy N --eager M [--batch-size B]

/authors/lazy loads 20 authors, then each author's books through the lazy relationship: one query per
author (the N+1). /authors/eager loads the same with selectinload: two queries in all. The table the
books come from is a view that sleeps 4 ms per query, a database a few milliseconds away. The app serves
on a loopback port, the script requests each endpoint N and M times, flushes the SDK and prints the
ground truth as JSON: the trace ids of each endpoint's requests.
"""

import argparse
import json
import threading
import urllib.request

from flask import Flask, jsonify
from sqlalchemy import ForeignKey, create_engine, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload
from werkzeug.serving import make_server

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

AUTHORS = 20
BOOKS_PER_AUTHOR = 2


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list["Book"]] = relationship(lazy="select")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
    title: Mapped[str]


def set_up(engine):
    with engine.begin() as c:
        c.execute(text("DROP VIEW IF EXISTS books"))
        c.execute(text("DROP TABLE IF EXISTS books_raw, authors"))
        c.execute(text("CREATE TABLE authors (id int PRIMARY KEY, name text NOT NULL)"))
        c.execute(
            text(
                "CREATE TABLE books_raw (id int PRIMARY KEY, author_id int NOT NULL REFERENCES authors, "
                "title text NOT NULL)"
            )
        )
        # Every query on the view waits 4 ms once: a database a few milliseconds away.
        c.execute(
            text(
                "CREATE VIEW books AS SELECT b.* FROM books_raw b CROSS JOIN (SELECT pg_sleep(0.004)) AS delay"
            )
        )
        for a in range(1, AUTHORS + 1):
            c.execute(text("INSERT INTO authors VALUES (:id, :name)"), {"id": a, "name": f"author {a}"})
            for b in range(BOOKS_PER_AUTHOR):
                bid = a * 100 + b
                c.execute(
                    text("INSERT INTO books_raw VALUES (:id, :a, :t)"),
                    {"id": bid, "a": a, "t": f"book {bid}"},
                )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pg", required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--lazy", type=int, default=1)
    ap.add_argument("--eager", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=512)
    a = ap.parse_args()

    engine = create_engine(a.pg.replace("postgresql://", "postgresql+psycopg2://"))
    set_up(engine)

    provider = TracerProvider(resource=Resource.create({"service.name": "orm-shop"}))
    provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{a.endpoint}/v1/traces"),
            max_export_batch_size=a.batch_size,
            schedule_delay_millis=200,
        )
    )
    trace.set_tracer_provider(provider)
    SQLAlchemyInstrumentor().instrument(engine=engine, tracer_provider=provider)

    app = Flask("orm-shop")
    FlaskInstrumentor().instrument_app(app, tracer_provider=provider)
    seen = {"lazy": [], "eager": []}

    def record(kind):
        seen[kind].append(format(trace.get_current_span().get_span_context().trace_id, "032x"))

    @app.get("/authors/lazy")
    def lazy():
        record("lazy")
        with Session(engine) as s:
            authors = s.scalars(select(Author).order_by(Author.id)).all()
            return jsonify({x.name: [b.title for b in x.books] for x in authors})

    @app.get("/authors/eager")
    def eager():
        record("eager")
        with Session(engine) as s:
            authors = s.scalars(select(Author).options(selectinload(Author.books)).order_by(Author.id)).all()
            return jsonify({x.name: [b.title for b in x.books] for x in authors})

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    for path, n in (("/authors/lazy", a.lazy), ("/authors/eager", a.eager)):
        for _ in range(n):
            with urllib.request.urlopen(base + path, timeout=10) as r:
                body = json.load(r)
                assert len(body) == AUTHORS and all(len(v) == BOOKS_PER_AUTHOR for v in body.values()), body
    server.shutdown()
    provider.force_flush()
    provider.shutdown()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
