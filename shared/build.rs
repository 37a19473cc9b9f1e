//! `db::migrations` embeds `../migrations` at compile time
//! (`refinery::embed_migrations!`); without this, a new migration file
//! would not rebuild the crate, and an incremental build would run the old
//! set.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
