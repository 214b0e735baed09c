//! Process shells.
