use super::*;
use crate::memory::{MemoryBroker, MemoryConfig};
use crate::message::Message;

#[tokio::test]
async fn list_holds_then_releases_and_purge_removes_only_the_selected() {
    let broker = MemoryBroker::new(MemoryConfig::default());
    let client = Client::new(broker.clone());
    let producer = client.producer().await.expect("producer");
    for (i, reason) in ["a", "b", "a"].iter().enumerate() {
        producer
            .send(
                "jobs-dlq",
                Message::new(format!("{i}"))
                    .with_header(headers::DEAD_LETTER_REASON, *reason)
                    .with_header(headers::ORIGINAL_SOURCE, "jobs"),
            )
            .await
            .expect("send");
    }
    let dl = client.dead_letters("jobs").idle(Duration::from_millis(50));
    let filter = Filter::new().reason_spec("a").expect("filter");
    assert_eq!(dl.list(&filter).await.expect("list").letters.len(), 2);
    assert_eq!(broker.held("jobs-dlq", None), 3, "listing removes nothing");
    let dry = dl.purge(&filter, true, &mut |_, _| {}).await.expect("dry");
    assert_eq!((dry.selected, dry.removed), (2, 0));
    let r = dl
        .replay(&filter, &ReplayOptions::new().dry_run(true), &mut |_, _| {})
        .await
        .expect("dry replay");
    assert_eq!(r.would_replay.len(), 2);
    assert_eq!(r.would_replay[0].1, "jobs");
    assert_eq!(broker.held("jobs", None), 0);
    let p = dl
        .purge(&filter, false, &mut |_, _| {})
        .await
        .expect("purge");
    assert_eq!(p.removed, 2);
    assert_eq!(broker.held("jobs-dlq", None), 1);
    let r = dl
        .replay(
            &Filter::new(),
            &ReplayOptions::new().to("elsewhere"),
            &mut |_, _| {},
        )
        .await
        .expect("replay");
    assert_eq!(r.replayed, 1);
    assert_eq!(broker.held("elsewhere", None), 1);
    assert_eq!(broker.held("jobs-dlq", None), 0);
}
