//! Lists: one answer type for every list ([`Page`]), how its size and
//! opaque cursor are read from a request ([`PageQuery`], [`page_limit`],
//! [`cursor`]), and how the next cursor is made ([`Page::new`]).

use std::borrow::Cow;

use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{Ref, RefOr};

use super::error::ApiError;

/// Page size when a request sets none.
pub const DEFAULT_PAGE: i64 = 50;
/// Largest page a request may ask for.
pub const MAX_PAGE: i64 = 200;

/// A page of a list, in the list's order. Its OpenAPI schema is
/// `Page_<item schema>`, its items a reference to the item's schema.
#[derive(Serialize)]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page read with `limit`: a full page carries a cursor naming its
    /// last item's sort `key` (the next page starts after it); a shorter
    /// one is the last.
    pub fn new<K: ToString>(items: Vec<T>, limit: i64, key: impl Fn(&T) -> K) -> Self {
        let full = i64::try_from(items.len()).is_ok_and(|n| n == limit);
        let next_cursor = if full {
            items.last().map(|x| cursor::encode(&key(x).to_string()))
        } else {
            None
        };
        Self { items, next_cursor }
    }

    /// The same page with every item turned into `f(item)`.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

/// The schema (`PartialSchema` comes with it): what `#[utoipa::path]` calls
/// for a generic body (`body = Page<T>`), as the `ToSchema` derive would
/// implement it, but with the items a reference to `T`'s schema (the derive
/// would copy it inline).
impl<T: ToSchema> utoipa::__dev::ComposeSchema for Page<T> {
    fn compose(_: Vec<RefOr<Schema>>) -> RefOr<Schema> {
        let items = ArrayBuilder::new().items(Ref::from_schema_name(T::name()));
        let cursor = ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
            .description(Some(
                "Pass as `cursor` to get the next page; `null` on the last page.",
            ));
        ObjectBuilder::new()
            .description(Some("A page of a list, in the list's order."))
            .property("items", items)
            .required("items")
            .property("next_cursor", cursor)
            .into()
    }
}

impl<T: ToSchema> ToSchema for Page<T> {
    /// `Page`; `#[utoipa::path]` names a body's schema `Page_<item>`.
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Page")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((T::name().into_owned(), T::schema()));
        T::schemas(schemas);
    }
}

impl<T: Serialize> IntoResponse for Page<T> {
    fn into_response(self) -> Response {
        axum::Json(self).into_response()
    }
}

/// Query of a list that takes nothing but its page.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// Page size, 1-200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The page size (checked) and the sort key the page starts after.
    pub fn parse<K: std::str::FromStr>(&self) -> Result<(i64, Option<K>), ApiError> {
        let limit = page_limit(self.limit)?;
        Ok((limit, cursor::decode_opt(self.cursor.as_deref())?))
    }
}

/// Checks a page size: 1–200, default 50.
pub fn page_limit(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::field("limit", "must be between 1 and 200")),
    }
}

/// Opaque pagination cursors: base64url of the last item's sort key.
pub mod cursor {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::ApiError;

    /// Encodes a sort key.
    pub fn encode(key: &str) -> String {
        URL_SAFE_NO_PAD.encode(key.as_bytes())
    }

    /// Decodes a cursor, 400 when it was not made by [`encode`].
    pub fn decode(cursor: &str) -> Result<String, ApiError> {
        URL_SAFE_NO_PAD
            .decode(cursor.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| ApiError::BadRequest("invalid cursor".into()))
    }

    /// Decodes an optional cursor holding a typed sort key (an id or a
    /// name), 400 when it was not made by [`encode`] from one.
    pub fn decode_opt<T: std::str::FromStr>(cursor: Option<&str>) -> Result<Option<T>, ApiError> {
        cursor
            .map(|c| {
                decode(c)?
                    .parse::<T>()
                    .map_err(|_| ApiError::BadRequest("invalid cursor".into()))
            })
            .transpose()
    }
}
