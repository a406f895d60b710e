//! [`SqsMetadata`]: what a delivery carries about its SQS message. The
//! consumer fills it in; the settler reads it to find the message's receipt.

/// SQS-specific facts about a delivery: `delivery.metadata::<SqsMetadata>()`.
#[derive(Debug, Clone)]
pub struct SqsMetadata {
    /// The settler's key for the delivery (its receipt and lease).
    pub(crate) tag: u64,
    receipt_handle: String,
    sqs_message_id: String,
    queue_url: String,
}

impl SqsMetadata {
    /// The metadata of a message received from `queue_url`, tracked by the
    /// settler under `tag`.
    pub(crate) fn new(
        tag: u64,
        receipt_handle: String,
        sqs_message_id: String,
        queue_url: String,
    ) -> Self {
        SqsMetadata {
            tag,
            receipt_handle,
            sqs_message_id,
            queue_url,
        }
    }

    /// The receipt handle of this receive (what delete and visibility calls take).
    pub fn receipt_handle(&self) -> &str {
        &self.receipt_handle
    }

    /// The id SQS gave the message (not the `mq` message id, which is in
    /// `mq-message-id`).
    pub fn sqs_message_id(&self) -> &str {
        &self.sqs_message_id
    }

    /// The URL of the queue the message came from.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}
