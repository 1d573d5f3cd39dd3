//! Bodies moved without blocking: a [`Source`] (an incoming body) and a [`Sink`] (an outgoing
//! body) that each do what they can at once and otherwise hand back the `wasi:io` pollable
//! they wait on, a [`Pump`] between the two through one bounded buffer, and [`wait_any`], the
//! one place the guest blocks. Nothing here holds more than [`CHUNK`] bytes of a body.

use wasip2::http::types::{ErrorCode, IncomingBody, OutgoingBody};
use wasip2::io::poll::{self, Pollable};
use wasip2::io::streams::{InputStream, OutputStream, StreamError};

/// The most bytes asked for per read, hence the most a pump holds between reading and writing.
pub const CHUNK: u64 = 64 * 1024;

/// Where a piece of non-blocking work stopped.
pub enum Step {
    /// It can go on once this pollable is ready.
    Wait(Pollable),
    /// It is over.
    Done,
}

/// What a body stream failed with, as text for a log line or an answer.
pub fn describe(error: StreamError) -> String {
    match error {
        StreamError::Closed => "the stream was closed".to_string(),
        StreamError::LastOperationFailed(e) => e.to_debug_string(),
    }
}

/// Blocks until one of the pollables in `slots` is ready, then empties the slots of the ready
/// ones: an empty slot means "advance me". Returns at once when no slot holds a pollable.
pub fn wait_any(slots: &mut [&mut Option<Pollable>]) {
    let (owners, pollables): (Vec<usize>, Vec<&Pollable>) = slots
        .iter()
        .enumerate()
        .filter_map(|(i, slot)| slot.as_ref().map(|p| (i, p)))
        .unzip();
    if pollables.is_empty() {
        return;
    }
    let ready = poll::poll(&pollables);
    for index in ready {
        *slots[owners[index as usize]] = None;
    }
}

/// What one read of a [`Source`] found.
pub enum Read {
    /// Bytes (never empty).
    Data(Vec<u8>),
    /// Nothing yet: wait on [`Source::ready`].
    NotYet,
    /// The body is over.
    End,
}

/// An incoming body (of a request or a response) being read.
pub struct Source {
    // Declared first, so dropped first: a stream must go before the body it belongs to.
    stream: InputStream,
    body: IncomingBody,
}

impl Source {
    /// Opens `body`'s stream; `None` if it was already taken (never, for a fresh body).
    pub fn new(body: IncomingBody) -> Option<Source> {
        let stream = body.stream().ok()?;
        Some(Source { stream, body })
    }

    /// Reads what has arrived, at most [`CHUNK`] bytes, without blocking.
    pub fn read(&self) -> Result<Read, String> {
        match self.stream.read(CHUNK) {
            Ok(bytes) if bytes.is_empty() => Ok(Read::NotYet),
            Ok(bytes) => Ok(Read::Data(bytes)),
            Err(StreamError::Closed) => Ok(Read::End),
            Err(e) => Err(describe(e)),
        }
    }

    /// Ready when [`Source::read`] has something new to say.
    pub fn ready(&self) -> Pollable {
        self.stream.subscribe()
    }

    /// Reads the rest of the body away (as much as the host lets a client send), then ends it.
    pub fn skip_to_end(self) {
        while self.stream.blocking_skip(CHUNK).is_ok() {}
        self.finish();
    }

    /// Ends a body read to its end. Trailers are not forwarded by this guest, so the future
    /// of them is dropped unread.
    pub fn finish(self) {
        let Source { stream, body } = self;
        drop(stream);
        drop(IncomingBody::finish(body));
    }
}

/// Bytes waiting to be written, and how many of them already were.
#[derive(Default)]
pub struct Buffer {
    bytes: Vec<u8>,
    written: usize,
}

impl Buffer {
    /// Whether everything has been written.
    pub fn is_empty(&self) -> bool {
        self.written == self.bytes.len()
    }

    /// Queues `bytes` after what is still unwritten.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.is_empty() {
            self.bytes.clear();
            self.written = 0;
        }
        self.bytes.extend_from_slice(bytes);
    }

    /// Takes `bytes` as the new content; only when everything before was written, so the
    /// buffer never holds more than one read.
    fn refill(&mut self, bytes: Vec<u8>) {
        debug_assert!(self.is_empty());
        self.bytes = bytes;
        self.written = 0;
    }
}

/// An outgoing body (of a request or a response) being written.
///
/// Dropping a `Sink` without [`Sink::finish`] aborts the body: its reader sees an error, not a
/// shorter body that looks complete.
pub struct Sink {
    // Declared first, so dropped first: a stream must go before the body it belongs to.
    stream: OutputStream,
    body: OutgoingBody,
    flushing: bool,
}

impl Sink {
    /// Opens `body`'s stream.
    pub fn new(body: OutgoingBody) -> Sink {
        let stream = body
            .write()
            .expect("a fresh outgoing body's stream is taken once, here");
        Sink {
            stream,
            body,
            flushing: false,
        }
    }

    /// Writes as much of `buffer` as the stream takes now. `Ok(None)` when all is written,
    /// else the pollable that is ready when the stream takes more.
    pub fn write_from(&self, buffer: &mut Buffer) -> Result<Option<Pollable>, String> {
        while !buffer.is_empty() {
            let room = self.stream.check_write().map_err(describe)?;
            if room == 0 {
                return Ok(Some(self.stream.subscribe()));
            }
            let unwritten = &buffer.bytes[buffer.written..];
            let n = unwritten
                .len()
                .min(usize::try_from(room).unwrap_or(usize::MAX));
            self.stream.write(&unwritten[..n]).map_err(describe)?;
            buffer.written += n;
        }
        Ok(None)
    }

    /// Asks for everything written to be flushed, and says when that has happened (the
    /// stream takes writes again).
    pub fn flush(&mut self) -> Result<Step, String> {
        if !self.flushing {
            self.stream.flush().map_err(describe)?;
            self.flushing = true;
        }
        match self.stream.check_write().map_err(describe)? {
            0 => Ok(Step::Wait(self.stream.subscribe())),
            _ => Ok(Step::Done),
        }
    }

    /// Ends the body (after [`Sink::flush`] is done).
    pub fn finish(self) -> Result<(), ErrorCode> {
        let Sink { stream, body, .. } = self;
        drop(stream);
        OutgoingBody::finish(body, None)
    }
}

/// Copies a [`Source`] into a [`Sink`] through one buffer of at most [`CHUNK`] bytes, reading
/// only when the previous read has been written: the writer's pace holds the reader back.
pub struct Pump {
    from: Option<Source>,
    to: Sink,
    buffer: Buffer,
}

impl Pump {
    /// A pump from `from` to `to`.
    pub fn new(from: Source, to: Sink) -> Pump {
        Pump {
            from: Some(from),
            to,
            buffer: Buffer::default(),
        }
    }

    /// Moves what can be moved now. `Done` when the source has ended and all of it is written
    /// and flushed; then [`Pump::finish`].
    pub fn advance(&mut self) -> Result<Step, String> {
        loop {
            if let Some(wait) = self.to.write_from(&mut self.buffer)? {
                return Ok(Step::Wait(wait));
            }
            let Some(from) = &self.from else {
                return self.to.flush();
            };
            match from.read()? {
                Read::Data(bytes) => self.buffer.refill(bytes),
                Read::NotYet => return Ok(Step::Wait(from.ready())),
                Read::End => {
                    if let Some(from) = self.from.take() {
                        from.finish();
                    }
                }
            }
        }
    }

    /// Gives back the source with its unread rest, if it has not ended; the sink is dropped
    /// unfinished, which aborts its body.
    pub fn into_source(self) -> Option<Source> {
        let Pump { from, to, .. } = self;
        drop(to);
        from
    }

    /// Ends the sink's body, once [`Pump::advance`] said `Done`.
    pub fn finish(self) -> Result<(), String> {
        self.to.finish().map_err(|code| format!("{code:?}"))
    }
}
