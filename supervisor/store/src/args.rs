//! One request's words as ranges of a buffer: what the parser produces, the
//! dispatcher runs and a MULTI queues. Its own module because the per-connection
//! state (`client`, which queues requests) and the command table both use it.

use std::ops::Range;

/// One request's words, as ranges of a buffer (the read buffer, or a queued copy).
#[derive(Clone, Copy)]
pub(crate) struct Args<'a> {
    pub buf: &'a [u8],
    pub ranges: &'a [Range<usize>],
}

impl<'a> Args<'a> {
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn get(&self, i: usize) -> &'a [u8] {
        &self.buf[self.ranges[i].clone()]
    }

    /// Words `from..`.
    pub fn rest(&self, from: usize) -> impl Iterator<Item = &'a [u8]> + 'a {
        let buf = self.buf;
        self.ranges[from..].iter().map(move |r| &buf[r.clone()])
    }
}
