use super::*;
use proptest::prelude::*;
use std::convert::Infallible;
use tower::ServiceExt;

fn key(id: &str, byte: u8) -> Key {
    Key::new(id, &[byte; 32]).unwrap()
}

fn echo() -> impl Service<Request<()>, Response = Response<String>, Error = Infallible> + Clone {
    tower::service_fn(|req: Request<()>| async move {
        let caller = req
            .extensions()
            .get::<Caller>()
            .map(|c| c.0.to_string())
            .unwrap_or_default();
        Ok::<_, Infallible>(Response::new(caller))
    })
}

fn grpc_status(res: &Response<String>) -> Option<tonic::Code> {
    tonic::Status::from_header_map(res.headers()).map(|s| s.code())
}

async fn call(keys: Keyring, path: &str, token: Option<&str>) -> Response<String> {
    let mut req = Request::builder().uri(path);
    if let Some(t) = token {
        req = req.header(HEADER, t);
    }
    VerifyLayer::new(keys)
        .layer(echo())
        .oneshot(req.body(()).unwrap())
        .await
        .unwrap()
}

#[test]
fn round_trip_and_rotation() {
    let (old, new) = (key("k1", 1), key("k2", 2));
    let token = mint(&old, "upload", 10_000);
    let rotated = Keyring {
        current: new.clone(),
        previous: Some(old.clone()),
    };
    assert_eq!(
        verify(&rotated, token.as_bytes(), 5_000),
        Ok("upload".into()),
        "previous key still verifies"
    );
    assert_eq!(
        verify(&Keyring::new(new), token.as_bytes(), 5_000),
        Err(AuthError::UnknownKey("k1".into()))
    );
    let skew = MAX_SKEW.as_millis() as u64;
    assert_eq!(
        verify(
            &Keyring::new(old.clone()),
            token.as_bytes(),
            10_000 + skew + 1
        ),
        Err(AuthError::Expired)
    );
    let forged = Keyring::new(key("k1", 9));
    assert_eq!(
        verify(&forged, token.as_bytes(), 5_000),
        Err(AuthError::Forged)
    );
    let tampered = token.replace("upload", "auth");
    assert_eq!(
        verify(&Keyring::new(old), tampered.as_bytes(), 5_000),
        Err(AuthError::Forged)
    );
    assert_eq!(Key::new("k", &[0; 31]).unwrap_err(), AuthError::BadKey);
}

proptest! {
    #[test]
    fn arbitrary_tokens_never_verify_or_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let keys = Keyring::new(key("k1", 1));
        prop_assert!(verify(&keys, &bytes, 0).is_err());
    }

    #[test]
    fn any_bit_flip_is_refused(pos in 0usize..200, bit in 0u8..8) {
        let k = key("k1", 1);
        let token = mint(&k, "metadata", u64::MAX / 2);
        let mut bytes = token.into_bytes();
        let pos = pos % bytes.len();
        bytes[pos] ^= 1 << bit;
        prop_assert!(verify(&Keyring::new(k), &bytes, 0).is_err());
    }
}

#[tokio::test]
async fn server_rejects_missing_expired_and_forged_tokens() {
    let k = key("k1", 1);
    let keys = Keyring::new(k.clone());
    let now = crate::rt::unix_ms();
    let good = mint(&k, "upload", now + 60_000);
    let res = call(keys.clone(), "/streamgate.v1.CacheService/Get", Some(&good)).await;
    assert_eq!(grpc_status(&res), None);
    assert_eq!(res.body(), "upload", "the handler sees the verified caller");

    let expired = mint(
        &k,
        "upload",
        now.saturating_sub(MAX_SKEW.as_millis() as u64 + 1_000),
    );
    let forged = mint(&key("k1", 7), "upload", now + 60_000);
    for (what, token) in [
        ("missing", None),
        ("expired", Some(expired.as_str())),
        ("forged", Some(forged.as_str())),
        ("garbage", Some("x.y")),
    ] {
        let res = call(keys.clone(), "/streamgate.v1.CacheService/Get", token).await;
        assert_eq!(
            grpc_status(&res),
            Some(tonic::Code::Unauthenticated),
            "{what}"
        );
        assert_eq!(res.body(), "", "{what}: the handler never ran");
    }
    let probe = call(keys.clone(), "/grpc.health.v1.Health/Check", None).await;
    assert_eq!(grpc_status(&probe), None, "health probes need no token");
    for path in [
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ] {
        let res = call(keys.clone(), path, None).await;
        assert_eq!(grpc_status(&res), None, "{path}: reflection needs no token");
    }
    let lookalike = call(
        keys,
        "/grpc.reflection.v1.ServerReflectionX/ServerReflectionInfo",
        None,
    )
    .await;
    assert_eq!(
        grpc_status(&lookalike),
        Some(tonic::Code::Unauthenticated),
        "only the reflection service itself is exempt"
    );
}

#[tokio::test]
async fn client_layer_attaches_a_token_the_server_accepts() {
    let keys = Keyring::new(key("k1", 1));
    let server = VerifyLayer::new(keys.clone()).layer(echo());
    let mut client = AttachLayer::new(&keys, "api-gateway").layer(server);
    for _ in 0..3 {
        let res = client
            .ready()
            .await
            .unwrap()
            .call(Request::builder().uri("/x/y").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.body(), "api-gateway");
    }
}
