//! What a backend can do, so applications and the conformance suite can
//! choose behaviour instead of discovering a missing feature at run time.

use std::time::Duration;

/// What a backend supports. Fields may be added; build one from
/// [`Capabilities::default`] and set the fields that apply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Messages can be sent with a delay ([`Message::with_delay`](crate::Message::with_delay)).
    pub delayed_delivery: bool,
    /// The longest delay a send or a delayed nack accepts, if limited.
    pub max_delay: Option<Duration>,
    /// Messages with the same key reach a single consumer of the source in
    /// the order they were confirmed, as long as none is nacked. (Kafka keeps
    /// that order across a whole group, per partition; a RabbitMQ queue only
    /// for one consumer at a time; SQS only on FIFO queues.)
    pub ordering_key: bool,
    /// The broker moves messages to a dead-letter queue itself (redrive policy).
    pub native_dead_letter: bool,
    /// Several groups on one destination each receive every message.
    pub pub_sub: bool,
    /// A group created after a message was sent still receives it (Kafka: yes,
    /// RabbitMQ fan-out: no). Point-to-point (the default group) never loses
    /// messages sent before the first consumer, whatever this says.
    pub late_group_receives_history: bool,
    /// The attempt number survives a process restart.
    pub durable_attempt_count: bool,
    /// Messages survive a broker restart.
    pub persistent: bool,
    /// The largest message accepted (payload plus headers), if known.
    pub max_message_size: Option<usize>,
    /// The largest batch one broker call takes.
    pub max_batch: usize,
    /// How dead letters are listed without being removed (see
    /// [`dlq`](crate::dlq)): held and released (queues) or read from a log.
    pub dead_letter_listing: DeadLetterListing,
}

/// How a backend lists dead letters without removing them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DeadLetterListing {
    /// A queue: a listing receives and holds what it shows, then releases
    /// it (it comes back with its receive count raised); one listing holds
    /// at most its limit at once, and ends when nothing arrives for its
    /// idle time.
    #[default]
    Hold,
    /// A queue that delivers nothing more of a message group while one of
    /// its messages is held (SQS FIFO): a listing moves each message it
    /// leaves in place to the back of the queue (a confirmed copy, then the
    /// original removed), so every listing rewrites what it reads.
    Rotate,
    /// A log: a listing reads by position without consuming, up to the end
    /// of the log when it started; removal is the backend's marker (Kafka:
    /// a record in `<dead-letter topic>-removed`), the record itself stays
    /// until retention deletes it.
    Log,
}

impl Default for Capabilities {
    /// The least a backend offers: nothing optional.
    fn default() -> Self {
        Capabilities {
            delayed_delivery: false,
            max_delay: None,
            ordering_key: false,
            native_dead_letter: false,
            pub_sub: false,
            late_group_receives_history: false,
            durable_attempt_count: false,
            persistent: false,
            max_message_size: None,
            max_batch: 1,
            dead_letter_listing: DeadLetterListing::Hold,
        }
    }
}
