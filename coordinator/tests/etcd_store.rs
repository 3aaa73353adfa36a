#![cfg(feature = "etcd")]
//! The etcd store against a real etcd.

mod support;

use factotum_coordinator::etcd::{EtcdConfig, EtcdStore};
use factotum_coordinator::{Fence, Store, StoreError, StoreOp};

fn put(k: &str, v: &str) -> StoreOp {
    StoreOp::Put {
        key: k.into(),
        value: v.as_bytes().to_vec(),
    }
}

#[tokio::test]
async fn commits_scan_and_prefixes() {
    let etcd = support::Etcd::start().await;
    let cfg = |prefix: &str| EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: prefix.into(),
        ..Default::default()
    };
    let a = EtcdStore::connect(&cfg("/a")).await.unwrap();
    let b = EtcdStore::connect(&cfg("/b")).await.unwrap();
    // More ops than one etcd transaction takes: committed in several.
    let many: Vec<StoreOp> = (0..300)
        .map(|i| put(&format!("runs/r1/tasks/{i:08}"), "x"))
        .collect();
    a.commit(many).await.unwrap();
    a.commit(vec![
        put("runs/r1/state", "RUNNING"),
        StoreOp::Delete {
            key: "runs/r1/tasks/00000000".into(),
        },
    ])
    .await
    .unwrap();
    // The same key twice in one batch: the last write wins (etcd alone would refuse it).
    a.commit(vec![
        put("runs/r1/state", "WAITING"),
        put("runs/r1/state", "RUNNING"),
    ])
    .await
    .unwrap();
    let got = a.scan("runs/r1/").await.unwrap();
    assert_eq!(got.len(), 300, "299 tasks and the state");
    assert!(got
        .iter()
        .any(|(k, v)| k == "runs/r1/state" && v == b"RUNNING"));
    assert!(
        b.scan("runs/").await.unwrap().is_empty(),
        "prefixes keep coordinators apart"
    );
}

#[tokio::test]
async fn a_failed_fence_refuses_the_write() {
    let etcd = support::Etcd::start().await;
    let cfg = EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        ..Default::default()
    };
    let unfenced = EtcdStore::connect(&cfg).await.unwrap();
    let mut kv = unfenced.client().kv_client();
    let leader = kv.put("/factotum/leader", "me", None).await.unwrap();
    let rev = leader.header().unwrap().revision();
    let store = unfenced.fenced(Fence::new(b"/factotum/leader".to_vec(), rev));
    assert_eq!(
        store.epoch(),
        rev as u64,
        "the epoch leases carry is the fence's"
    );
    assert_eq!(unfenced.epoch(), 0);
    store.commit(vec![put("k", "1")]).await.unwrap();
    // Someone else becomes leader: the key is re-created with a newer revision.
    kv.delete("/factotum/leader", None).await.unwrap();
    kv.put("/factotum/leader", "other", None).await.unwrap();
    let err = store.commit(vec![put("k", "2")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced), "{err}");
    assert_eq!(store.scan("k").await.unwrap()[0].1, b"1");
}

#[tokio::test]
async fn an_unreachable_etcd_is_unavailable_then_recovers() {
    let mut etcd = support::Etcd::start().await;
    let cfg = EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        ..Default::default()
    };
    let store = EtcdStore::connect(&cfg).await.unwrap();
    store.commit(vec![put("k", "1")]).await.unwrap();
    etcd.kill();
    let err = store.commit(vec![put("k", "2")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    etcd.restart().await;
    let mut ok = false;
    for _ in 0..50 {
        if store.commit(vec![put("k", "3")]).await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ok, "the store did not recover once etcd was back");
    assert_eq!(store.scan("k").await.unwrap()[0].1, b"3");
}

#[tokio::test]
async fn a_prefix_reads_in_pages_and_deletes_as_one() {
    let etcd = support::Etcd::start().await;
    let cfg = EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        ..Default::default()
    };
    let store = EtcdStore::connect(&cfg).await.unwrap();
    let ops: Vec<StoreOp> = (0..300)
        .map(|i| put(&format!("runs/r1/tasks/{i:08}"), "x"))
        .chain([put("runs/r10/state", "y"), put("runt", "z")])
        .collect();
    for chunk in ops.chunks(100) {
        store.commit(chunk.to_vec()).await.unwrap();
    }
    let mut seen = vec![];
    let mut after: Option<String> = None;
    loop {
        let page = store
            .scan_page("runs/r1/", after.as_deref(), 128)
            .await
            .unwrap();
        assert!(page.len() <= 128);
        after = page.last().map(|(k, _)| k.clone());
        let last = page.len() < 128;
        seen.extend(page.into_iter().map(|(k, _)| k));
        if last {
            break;
        }
    }
    assert_eq!(seen.len(), 300, "every key once, no more: not runs/r10/");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in key order");
    store
        .commit(vec![StoreOp::DeletePrefix {
            prefix: "runs/r1/".into(),
        }])
        .await
        .unwrap();
    assert!(store.scan("runs/r1/").await.unwrap().is_empty());
    assert_eq!(
        store.scan("runs/r10/").await.unwrap().len(),
        1,
        "another run is left alone"
    );
    assert_eq!(store.scan("runt").await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_leaders_writes_are_numbered_so_a_stale_one_never_lands() {
    let etcd = support::Etcd::start().await;
    let cfg = EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        ..Default::default()
    };
    let unfenced = EtcdStore::connect(&cfg).await.unwrap();
    let mut kv = unfenced.client().kv_client();
    let counters = |kv: &mut etcd_client::KvClient| {
        let mut kv = kv.clone();
        async move {
            let opts = etcd_client::GetOptions::new().with_prefix();
            let got = kv.get("/factotum/writes/", Some(opts)).await.unwrap();
            got.kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.key_str().unwrap().to_string(),
                        kv.value_str().unwrap().to_string(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let term = |rev: i64| Fence::new(b"/factotum/leader".to_vec(), rev);
    let first = kv.put("/factotum/leader", "a", None).await.unwrap();
    let store = unfenced.fenced(term(first.header().unwrap().revision()));
    for v in ["1", "2", "3"] {
        store.commit(vec![put("k", v)]).await.unwrap();
    }
    let now = counters(&mut kv).await;
    assert_eq!(now.len(), 1, "{now:?}");
    let (key, value) = &now[0];
    let (n, writer) = value.split_once(' ').unwrap();
    assert_eq!(n, "3", "three writes of this term");
    // A try of write 2 that etcd applies only now (a proposal held up somewhere): it requires
    // the counter after write 1, so nothing of it lands over write 3.
    let stale = etcd_client::Txn::new()
        .when(vec![etcd_client::Compare::value(
            key.as_str(),
            etcd_client::CompareOp::Equal,
            format!("1 {writer}"),
        )])
        .and_then(vec![
            etcd_client::TxnOp::put("/factotum/k", "2", None),
            etcd_client::TxnOp::put(key.as_str(), format!("2 {writer}"), None),
        ]);
    assert!(!kv.txn(stale).await.unwrap().succeeded());
    assert_eq!(store.scan("k").await.unwrap()[0].1, b"3");
    // The next term's first write clears the earlier terms' counters.
    kv.delete("/factotum/leader", None).await.unwrap();
    let second = kv.put("/factotum/leader", "b", None).await.unwrap();
    let next = unfenced.fenced(term(second.header().unwrap().revision()));
    next.commit(vec![put("k", "4")]).await.unwrap();
    let now = counters(&mut kv).await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(&now[0].0, key);
    assert!(now[0].1.starts_with("1 "));
    // The deposed term's store is refused, whatever its counter says.
    let err = store.commit(vec![put("k", "5")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Fenced), "{err}");
}
